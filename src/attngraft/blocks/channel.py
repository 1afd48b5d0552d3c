"""Channel (and spatial) attention: squeeze-and-excitation, ECA and CBAM, built on timm's implementations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule
from typing_extensions import override

from attngraft.blocks._ops import Block
from attngraft.blocks.factory import register_block


class _ChannelGate(Block):
    """Map block wrapping a timm gating module: input checks, our constructor conventions."""

    layout = "map"
    family = "channel"

    def __init__(self, dim: int, make_gate: Callable[[], torch.nn.Module]) -> None:
        super().__init__(dim)  # validates dim before the gate is built
        self.gate = make_gate()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.gate(x)


def _check_reduction(owner: str, reduction: int) -> None:
    if reduction < 1:
        raise ValueError(f"{owner}: reduction must be a positive integer, got {reduction}")


@register_block("se")
class SqueezeExcite(_ChannelGate):
    """Squeeze-and-excitation (Hu et al. 2018): ``x · σ(W₂ δ(W₁ avgpool(x)))``.

    Args:
        dim: Channels C.
        reduction: Bottleneck ratio r (hidden channels C / r, at least 8 via timm's rounding).

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    def __init__(self, dim: int, *, reduction: int = 16) -> None:
        _check_reduction(type(self).__name__, reduction)
        super().__init__(dim, lambda: SEModule(dim, rd_ratio=1.0 / reduction))


@register_block("eca")
class EfficientChannelAttention(_ChannelGate):
    """ECA (Wang et al. 2020): a 1-D convolution across pooled channels instead of SE's bottleneck MLP.

    Args:
        dim: Channels C.
        kernel_size: Odd 1-D kernel size; default adaptive to C as in the paper (odd ``|(log2 C + 1) / 2|``, ≥ 3).

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    def __init__(self, dim: int, *, kernel_size: int | None = None) -> None:
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"EfficientChannelAttention: kernel_size must be odd and positive, got {kernel_size}")
        adaptive = kernel_size is None  # timm picks the adaptive size when given the channels
        super().__init__(dim, lambda: EcaModule(channels=dim if adaptive else None, kernel_size=kernel_size or 3))


@register_block("cbam")
class ConvBlockAttention(_ChannelGate):
    """CBAM (Woo et al. 2018): channel attention (avg + max pooled MLP) then spatial attention (k×k conv).

    Args:
        dim: Channels C.
        reduction: Bottleneck ratio of the channel MLP.
        spatial_kernel: Odd kernel size of the spatial attention convolution.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    def __init__(self, dim: int, *, reduction: int = 16, spatial_kernel: int = 7) -> None:
        _check_reduction(type(self).__name__, reduction)
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"ConvBlockAttention: spatial_kernel must be odd and positive, got {spatial_kernel}")
        super().__init__(dim, lambda: CbamModule(dim, rd_ratio=1.0 / reduction, spatial_kernel_size=spatial_kernel))
