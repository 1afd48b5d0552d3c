"""What ``attngraft explain`` reads: a training checkpoint (the network), its run's config (the data) and images.

Checkpoints are read by :mod:`attngraft.train.checkpoint` (weights only; the network rebuilt offline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from attngraft.data import load_image
from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError, CorruptDataError
from attngraft.train import checkpoint as train_checkpoint
from attngraft.validation import read_yaml

# The data settings that decide what the network sees; loader and training settings do not matter here.
DATA_KEYS = ("dataset", "data_dir", "image_size", "channels", "normalize", "val_size", "test_size", "split_seed")


@dataclass(frozen=True)
class Sample:
    """An image to explain.

    Attributes:
        name: File stem of its figure (``test_00042`` or the input file's stem).
        image: The normalised image the network takes.
        label: Its true class, when known.

    Shape:
        - image: (C, H, W).
    """

    name: str
    image: torch.Tensor
    label: int | None


def load_network(checkpoint: str | Path) -> nn.Module:
    """The trained network of a Lightning checkpoint written by ``attngraft fit``, in eval mode on the CPU.

    Raises:
        WeightsNotFoundError: If the file does not exist.
        WeightsError: If it is not a weights-only checkpoint of an attngraft classifier, or its weights do not fit.
    """
    return load_checkpoint(checkpoint)[0]


def load_checkpoint(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained network of an ``attngraft fit`` checkpoint (eval mode, CPU) and the classifier's arguments.

    Raises:
        WeightsNotFoundError: If the file does not exist.
        WeightsError: If it is not a weights-only checkpoint of an attngraft classifier, or its weights do not fit.
    """
    trained = train_checkpoint.load_checkpoint(checkpoint)
    return trained.network, trained.hyperparameters


def data_settings(config: str | Path | None, checkpoint: str | Path) -> dict[str, Any]:
    """The ``data`` settings of the run: ``config``, else the ``config.yaml`` LightningCLI wrote beside the run.

    Without either, the data module's defaults (Fashion-MNIST) apply.

    Raises:
        ConfigError: If the config cannot be read or its ``data`` section is not a mapping.
    """
    path = Path(config) if config is not None else Path(checkpoint).parent.parent / "config.yaml"
    if config is None and not path.is_file():
        return {}
    content = read_yaml(path, "config")
    data = content.get("data", {}) if isinstance(content, Mapping) else None
    if isinstance(data, Mapping) and isinstance(data.get("init_args"), Mapping):
        data = data["init_args"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {path}: expected a 'data' mapping of the data module's settings")
    return {key: value for key, value in data.items() if key in DATA_KEYS and value is not None}


def official_test_samples(datamodule: ImageDataModule, count: int, per_class: int = 0) -> list[Sample]:
    """The first ``count`` test images, or with ``per_class`` the first ``per_class`` of every class, in order."""
    datamodule.prepare_data()
    datamodule.setup("test")
    test = datamodule.splits["test"]
    taken: list[Sample] = []
    per_label: dict[int, int] = {}
    limit = per_class * datamodule.num_classes if per_class else count
    for index in range(len(test)):  # type: ignore[arg-type]
        image, label = test[index]
        if per_class and per_label.get(label, 0) >= per_class:
            continue
        per_label[label] = per_label.get(label, 0) + 1
        taken.append(Sample(f"test_{index:05d}", image, int(label)))
        if len(taken) >= limit:
            break
    return taken


def _with_channels(picture: Image.Image, channels: int | None) -> Image.Image:
    """A decoded image (``L``, ``RGB`` or 16-bit-exact grey ``F``) with the channels the dataset's images have."""
    if channels == 1 and picture.mode == "RGB":
        return picture.convert("L")
    if channels == 3 and picture.mode == "F":  # grey in [0, 1]: to 8 bits, as the RGB datasets store their images
        picture = Image.fromarray(np.round(np.asarray(picture) * 255).astype(np.uint8), mode="L")
    return picture.convert("RGB") if channels == 3 else picture


def file_samples(paths: Sequence[str | Path], datamodule: ImageDataModule) -> list[Sample]:
    """Image files, converted as the data module converts its images (grey or RGB, resized, normalised).

    Files are resized to the data module's ``image_size``, else to the dataset's image size. Samples are named by
    the file's stem (``shoe``, then ``shoe_2`` for a second ``shoe.*``).

    Raises:
        ConfigError: For a missing or unreadable file, naming it, or files of different sizes that nothing resizes.
    """
    native = datamodule.spec.image_shape
    source_channels = native[0] if native is not None else None  # None: the transform matches any channels
    samples: list[Sample] = []
    names: set[str] = set()
    for entry in paths:
        path = Path(entry)
        if not path.is_file():
            raise ConfigError(f"image {path}: cannot read it: no such file")
        try:
            picture = _with_channels(load_image(path), source_channels)
        except CorruptDataError as error:
            raise ConfigError(f"image {error}") from None
        if native is not None and datamodule.image_size is None and picture.size != (native[2], native[1]):
            picture = picture.resize((native[2], native[1]), Image.Resampling.BILINEAR)
        image = datamodule.eval_transform(picture)
        if samples and image.shape != samples[0].image.shape:
            raise ConfigError(
                f"image {path}: {tuple(image.shape)} after the data's transform, but {samples[0].name} is "
                f"{tuple(samples[0].image.shape)}: set data.image_size in the --config to resize them alike"
            )
        name = _unique(path.stem, names)
        samples.append(Sample(name, image, None))
    return samples


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... when taken; the result is added to ``taken``."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate)
    return candidate
