"""A dataset's vital statistics, as printed by ``attngraft data``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attngraft.data.datasets import get_dataset_spec, locate_dataset
from attngraft.data.splits import split_indices


@dataclass(frozen=True)
class DatasetSummary:
    """Where a dataset is and what it holds.

    Attributes:
        name: Registered name.
        source: Where the files were found.
        root: The directory torchvision reads (the staging cache when files were decompressed or extracted).
        split_sizes: Images per split: ``train`` and ``val`` (from the official train set) and ``test``.
        classes: Class names in label order.
        class_counts: Images per class in the official ``train`` and ``test`` sets.
        image_shape: (C, H, W) of the first training image.
        mean: Per-channel pixel mean in [0, 1] over the official train set (measured).
        std: Per-channel pixel standard deviation over the official train set (measured).
    """

    name: str
    source: Path
    root: Path
    split_sizes: dict[str, int]
    classes: list[str]
    class_counts: dict[str, list[int]]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _pixels(dataset: Any, max_images: int) -> np.ndarray:
    """Returns the images as a uint8 array (N, H, W, C); all of them when held in memory, else the first few."""
    data = getattr(dataset, "data", None)
    if data is not None:
        array = np.asarray(data)
        return array[..., None] if array.ndim == 3 else array  # (N, H, W, C)
    images = [np.asarray(dataset[index][0]) for index in range(min(len(dataset), max_images))]
    return np.stack([image[..., None] if image.ndim == 2 else image for image in images])  # (N, H, W, C)


def pixel_statistics(dataset: Any, max_images: int = 1_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixel values scaled to [0, 1].

    In-memory datasets (MNIST, CIFAR) use every image; others the first ``max_images`` (all the same size).
    """
    pixels = _pixels(dataset, max_images).astype(np.float64) / 255.0
    flat = pixels.reshape(-1, pixels.shape[-1])  # (N*H*W, C)
    return tuple(flat.mean(axis=0).tolist()), tuple(flat.std(axis=0).tolist())


def _class_counts(dataset: Any, num_classes: int) -> list[int]:
    counts = Counter(int(label) for label in np.asarray(dataset.targets).tolist())
    return [counts.get(label, 0) for label in range(num_classes)]


def summarize(name: str, data_dir: str | Path | None = None, download: bool = False) -> DatasetSummary:
    """Locates dataset ``name`` and measures its splits, class balance, image shape and pixel statistics."""
    spec = get_dataset_spec(name)
    located = locate_dataset(name, data_dir=data_dir, download=download)
    train = spec.source.open(located.root, train=True)
    test = spec.source.open(located.root, train=False)
    train_indices, val_indices = split_indices(len(train), spec.val_size, seed=0)  # type: ignore[arg-type]
    classes = list(train.classes)  # type: ignore[attr-defined]
    first_image = np.asarray(train[0][0])
    height, width = first_image.shape[:2]
    channels = 1 if first_image.ndim == 2 else first_image.shape[2]
    mean, std = pixel_statistics(train)
    return DatasetSummary(
        name=name,
        source=located.source,
        root=located.root,
        split_sizes={"train": len(train_indices), "val": len(val_indices), "test": len(test)},  # type: ignore[arg-type]
        classes=classes,
        class_counts={"train": _class_counts(train, len(classes)), "test": _class_counts(test, len(classes))},
        image_shape=(channels, height, width),
        mean=mean,
        std=std,
    )
