"""Per-dataset input pipelines built from torchvision.transforms.v2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2
from typing_extensions import override


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


def build_transform(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    augment: Sequence[nn.Module] = (),
    normalize: bool = True,
) -> v2.Compose:
    """PIL image → normalised float tensor, with optional augmentation, resizing and channel replication.

    Args:
        mean: Per-channel mean of the dataset (length 1 for grey images).
        std: Per-channel standard deviation.
        image_size: Resize (bilinear, antialiased) to a square of this side when given.
        channels: Replicate 1-channel images to this many channels (e.g. 3 for ImageNet backbones).
        augment: Augmentations applied to the uint8 image tensor before conversion to float.
        normalize: Subtract the mean and divide by the standard deviation.
    """
    steps: list[nn.Module] = [v2.ToImage(), *augment]
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if channels is not None and channels != len(mean):
        steps.append(RepeatChannels(channels))
        mean, std = list(mean) * channels, list(std) * channels
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)
