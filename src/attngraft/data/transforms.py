"""Per-dataset input pipelines built from torchvision.transforms.v2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.transforms import v2
from typing_extensions import override

from attngraft import validation
from attngraft.data.constants import IMAGENET_MEAN, IMAGENET_STD

Normalization = Literal["auto", "dataset", "imagenet", "none"]
NORMALIZATIONS: tuple[str, ...] = ("auto", "dataset", "imagenet", "none")


class RepeatChannels(nn.Module):
    """Replicates a 1-channel image to ``channels`` channels, so grey images can feed RGB backbones.

    Shape:
        - Input: (1, H, W) or (C, H, W) with C == channels (returned unchanged).
        - Output: (channels, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3] == self.channels:
            return image
        if image.shape[-3] != 1:
            raise ValueError(f"RepeatChannels: cannot turn {image.shape[-3]} channels into {self.channels}")
        return image.expand(*image.shape[:-3], self.channels, *image.shape[-2:])  # (..., channels, H, W)

    @override
    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class MatchChannels(nn.Module):
    """Turns grey or RGB images into ``channels`` channels, for folders that mix both.

    A 1-channel image is replicated; a 3-channel image becomes grey (``channels=1``) with ITU-R 601-2 luma weights,
    as PIL's ``convert("L")`` does.

    Shape:
        - Input: (..., 1, H, W) or (..., 3, H, W).
        - Output: (..., channels, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"MatchChannels: channels must be 1 or 3, got {channels}")
        self.channels = channels

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        found = image.shape[-3]
        if found == self.channels:
            return image
        if found == 1:
            return image.expand(*image.shape[:-3], self.channels, *image.shape[-2:])  # (..., channels, H, W)
        if found == 3:
            return v2.functional.rgb_to_grayscale(image, num_output_channels=1)  # (..., 1, H, W)
        raise ValueError(f"MatchChannels: expected 1 or 3 channels, got {found}")

    @override
    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def fit_statistics(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Statistics for ``channels``-channel images: grey ones replicated, RGB ones averaged for grey images.

    ImageNet's statistics for a grey image are the averages of its three channels' (mean 0.449, std 0.226).
    """
    if len(mean) != len(std):
        raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * channels, tuple(std) * channels
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    raise ValueError(f"cannot use statistics of {len(mean)} channels for {channels}-channel images")


def normalization_statistics(
    normalize: bool | str, dataset_mean: Sequence[float], dataset_std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a ``normalize`` choice stands for, or None for no normalisation.

    Args:
        normalize: ``"dataset"`` (or ``"auto"``, or True): the dataset's statistics; ``"imagenet"``: ImageNet's;
            ``"none"`` (or False): none.
        dataset_mean: The dataset's per-channel mean.
        dataset_std: The dataset's per-channel standard deviation.

    Raises:
        ConfigError: For any other value, naming ``data.normalize`` and the choices.
    """
    choice = resolve_normalization(normalize)
    if choice == "none":
        return None
    if choice == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(dataset_mean), tuple(dataset_std)


def resolve_normalization(normalize: bool | str, *, imagenet_weights: bool = False) -> str:
    """Resolves a ``normalize`` setting to ``"dataset"``, ``"imagenet"`` or ``"none"``.

    ``"auto"`` becomes ``"imagenet"`` when the backbone starts from ImageNet weights (``imagenet_weights``), else
    ``"dataset"``; True and False (older configs) mean ``"dataset"`` and ``"none"``.

    Raises:
        ConfigError: For a value that is none of ``NORMALIZATIONS`` or a bool.
    """
    if isinstance(normalize, bool):
        return "dataset" if normalize else "none"
    validation.choice(normalize, "data.normalize", NORMALIZATIONS)
    if normalize == "auto":
        return "imagenet" if imagenet_weights else "dataset"
    return normalize


def build_transform(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    source_channels: int | None = -1,
    augment: Sequence[nn.Module] = (),
    normalize: bool = True,
) -> v2.Compose:
    """Image (PIL ``L``/``RGB``/``F``, or a tensor) → normalised float tensor, with augmentation, resizing, channels.

    Args:
        mean: Per-channel normalisation mean (1 or 3 values; fitted to ``channels`` by :func:`fit_statistics`).
        std: Per-channel normalisation standard deviation.
        image_size: Resize (bilinear, antialiased) to a square of this side when given.
        channels: Channels of the output (e.g. 3 for ImageNet backbones); default ``source_channels``, or
            ``len(mean)`` when that is unknown or varies.
        source_channels: Channels of the images read. ``-1`` (default): ``len(mean)``. ``None``: they vary (a folder
            of grey and colour images), and every image is converted with :class:`MatchChannels`.
        augment: Augmentations applied to the image tensor (uint8 for 8-bit images) before conversion to float.
        normalize: Subtract the mean and divide by the standard deviation.

    Raises:
        ValueError: If the statistics do not fit the output's channels.
    """
    if source_channels == -1:
        source_channels = len(mean)
    target = channels if channels is not None else (source_channels or len(mean))
    steps: list[nn.Module] = [v2.ToImage(), *augment]
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if source_channels is None or (source_channels != 1 and source_channels != target):
        steps.append(MatchChannels(target))
    elif source_channels != target:
        steps.append(RepeatChannels(target))  # grey images of a registered dataset
    if normalize:
        fitted_mean, fitted_std = fit_statistics(mean, std, target)
        steps.append(v2.Normalize(mean=list(fitted_mean), std=list(fitted_std)))
    return v2.Compose(steps)
