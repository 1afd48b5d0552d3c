"""A dataset's vital statistics, as printed by ``attngraft data``.

In-memory datasets (MNIST family, CIFAR) are read and measured with numpy alone, so describing them does not import
torch; image folders are measured through the transforms (torch), on a sample of their images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attngraft.data.datasets import SplitPart, get_dataset_spec, locate_dataset, split_dataset

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSummary:
    """Where a dataset is and what it holds.

    Attributes:
        name: Registered name.
        source: Where the files were found.
        root: The directory torchvision reads (the staging cache when files were decompressed or extracted).
        layout: ``"train/test"`` (official train and test splits) or ``"flat"`` (one folder of class folders).
        split_sizes: Images per split: ``train``, ``val`` and ``test``, as the data module's defaults split them.
        classes: Class names in label order.
        class_counts: Images per class in each split (``train``, ``val``, ``test``).
        image_shape: (C, H, W) of the most common measured image shape (C after grey/RGB conversion).
        image_shapes: Number of distinct (C, H, W) among the measured images.
        measured_images: Images the shapes and statistics were measured on.
        mean: Per-channel pixel mean in [0, 1] of the measured training images.
        std: Per-channel pixel standard deviation of the measured training images.
    """

    name: str
    source: Path
    root: Path
    layout: str
    split_sizes: dict[str, int]
    classes: list[str]
    class_counts: dict[str, list[int]]
    image_shape: tuple[int, int, int]
    image_shapes: int
    measured_images: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class _Pixels:
    shapes: Counter[tuple[int, int, int]]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _in_memory_pixels(data: Any) -> _Pixels:
    """Statistics of every image of an in-memory uint8 array (MNIST, CIFAR), exact, from a histogram per channel."""
    array = np.asarray(data)
    array = array[..., None] if array.ndim == 3 else array  # (N, H, W, C)
    count, height, width, channels = array.shape
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(channels):
        histogram = np.bincount(array[..., channel].ravel(), minlength=256).astype(np.float64)  # (256,)
        weights = histogram / histogram.sum()
        mean = float(weights @ levels)
        means.append(mean)
        stds.append(float(np.sqrt(weights @ (levels - mean) ** 2)))
    return _Pixels(Counter({(channels, height, width): count}), tuple(means), tuple(stds))


def _file_pixels(dataset: Any, indices: list[int], channels: int, max_images: int) -> _Pixels:
    """Statistics of up to ``max_images`` images spread evenly over ``indices``, each converted to ``channels``."""
    import torch

    from attngraft.data.transforms import build_transform

    to_tensor = build_transform((0.0,), (1.0,), channels=channels, source_channels=None, normalize=False)
    picks = np.unique(np.linspace(0, len(indices) - 1, num=min(len(indices), max_images)).round().astype(int))
    shapes: Counter[tuple[int, int, int]] = Counter()
    sums, squares, count = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64), 0
    for pick in picks.tolist():
        image = dataset[indices[pick]][0]
        native = np.asarray(image).shape  # (H, W) or (H, W, C)
        shapes[(1 if len(native) == 2 else native[2], native[0], native[1])] += 1
        pixels = to_tensor(image).to(torch.float64).flatten(1)  # (C, H*W)
        sums += pixels.sum(dim=1)
        squares += (pixels**2).sum(dim=1)
        count += pixels.shape[1]
    mean = sums / count
    std = (squares / count - mean**2).clamp_min(0).sqrt()
    return _Pixels(shapes, tuple(mean.tolist()), tuple(std.tolist()))


def pixel_statistics(
    dataset: Any, max_images: int = 1_000, *, channels: int | None = None, indices: list[int] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixel values scaled to [0, 1].

    In-memory datasets (MNIST, CIFAR) use every image; others ``max_images`` spread over ``indices`` (default all),
    each converted to ``channels`` (default 3), so images of any size and mode can be measured together.
    """
    pixels = _measure(dataset, max_images, channels or 3, indices)
    return pixels.mean, pixels.std


def _measure(dataset: Any, max_images: int, channels: int, indices: list[int] | None) -> _Pixels:
    data = getattr(dataset, "data", None)
    if data is not None:
        return _in_memory_pixels(data)
    return _file_pixels(dataset, list(range(len(dataset))) if indices is None else indices, channels, max_images)


def _class_counts(part: SplitPart, num_classes: int) -> list[int]:
    targets = np.asarray(part.dataset.targets)
    counts = Counter(targets[part.indices].tolist())
    return [counts.get(label, 0) for label in range(num_classes)]


def summarize(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    val_size: int | float | None = None,
    test_size: int | float | None = None,
    seed: int = 0,
    max_images: int = 1_000,
) -> DatasetSummary:
    """Locates dataset ``name`` and measures its splits, class balance, image shapes and pixel statistics.

    The splits are the data module's (:func:`attngraft.data.split_dataset`) for the given sizes and seed; the
    defaults are the data module's. Datasets read from files are measured on ``max_images`` training images.
    """
    spec = get_dataset_spec(name)
    located = locate_dataset(name, data_dir=data_dir, download=download)
    parts = split_dataset(
        name, SPLITS, data_dir=data_dir, val_size=val_size, test_size=test_size, seed=seed, in_memory=True
    )
    classes = list(parts["train"].dataset.classes)
    train = parts["train"]
    pixels = _measure(train.dataset, max_images, spec.channels, sorted(train.indices))
    return DatasetSummary(
        name=name,
        source=located.source,
        root=located.root,
        layout=located.layout,
        split_sizes={split: len(parts[split].indices) for split in SPLITS},
        classes=classes,
        class_counts={split: _class_counts(parts[split], len(classes)) for split in SPLITS},
        image_shape=pixels.shapes.most_common(1)[0][0],
        image_shapes=len(pixels.shapes),
        measured_images=pixels.shapes.total(),
        mean=pixels.mean,
        std=pixels.std,
    )
