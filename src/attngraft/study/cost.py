"""The cost of one attention layer as the image grows: analytic formulas, checked against the blocks themselves.

For an image side R (N = R² pixels), channels C and h heads, one layer on one image:

=============  ===============================  ==========================================
design         attention-matrix entries         forward FLOPs (2 per multiply-add)
=============  ===============================  ==========================================
pixel (mhsa)   h·N²                             8NC² + 4N²C
graph (pixel)  h·N²                             4NC² + 4NC + 2N²C
vit, patch p   h·T², T = (R/p)² + 1             8TC² + 4T²C
local, k×k     h·N·k²                           6NC² + 6NCk²
window, w×w    h·P·w², P = (⌈R/w⌉·w)²           8PC² + 4PCw²
non_local      N²                               4NC² + 2N²C
=============  ===============================  ==========================================

The pixel designs grow as R⁴, the windowed ones as R². This module is the first step of ``attngraft cost``: the
formulas and the measured counts they are tested against (entries from the recorded probabilities, exact; FLOPs
from ``torch.utils.flop_counter``, exact except ``local``: +2.9% at C = 32, k = 7, because the block's relative
logits go through an einsum the counter sees beside the block's own k×k formula).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attngraft.blocks import create_block, record_attention
from attngraft.models.cost import flops
from attngraft.registry import Registry

BYTES_PER_ENTRY = 4  # fp32


@dataclass(frozen=True)
class LayerCost:
    """One layer's analytic cost on one image.

    Attributes:
        entries: Attention-matrix entries (all heads).
        flops: Forward FLOPs of the layer (projections and attention; not norms, softmax or the MLP).
    """

    entries: int
    flops: int

    @property
    def attention_bytes(self) -> int:
        """Memory of the attention matrices in fp32."""
        return self.entries * BYTES_PER_ENTRY


@dataclass(frozen=True)
class Design:
    """An attention design: its analytic cost and the block that realises it.

    Attributes:
        title: Display name.
        cost: ``(side, dim, heads) → LayerCost``.
        block: ``(dim, heads) → (block, input shape for side)``: the block and a function of the side giving its input.
    """

    title: str
    cost: Callable[[int, int, int], LayerCost]
    block: Callable[[int, int], tuple[nn.Module, Callable[[int], tuple[int, ...]]]]


DESIGNS: Registry[Design] = Registry("attention design")
PATCH_SIZE = 4
KERNEL_SIZE = 7
WINDOW_SIZE = 7


def _pixels(side: int) -> int:
    return side * side


def _tokens(channels: int) -> Callable[[int], tuple[int, ...]]:
    return lambda side: (1, _pixels(side), channels)


def _map(channels: int) -> Callable[[int], tuple[int, ...]]:
    return lambda side: (1, channels, side, side)


def _pixel_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(heads * pixels**2, 8 * pixels * dim**2 + 4 * pixels**2 * dim)


def _graph_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(heads * pixels**2, 4 * pixels * dim**2 + 4 * pixels * dim + 2 * pixels**2 * dim)


def _vit_cost(side: int, dim: int, heads: int) -> LayerCost:
    tokens = (side // PATCH_SIZE) ** 2 + 1
    return LayerCost(heads * tokens**2, 8 * tokens * dim**2 + 4 * tokens**2 * dim)


def _local_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(heads * pixels * KERNEL_SIZE**2, 6 * pixels * dim**2 + 6 * pixels * dim * KERNEL_SIZE**2)


def _window_cost(side: int, dim: int, heads: int) -> LayerCost:
    padded = (math.ceil(side / WINDOW_SIZE) * WINDOW_SIZE) ** 2
    return LayerCost(heads * padded * WINDOW_SIZE**2, 8 * padded * dim**2 + 4 * padded * dim * WINDOW_SIZE**2)


def _non_local_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(pixels**2, 4 * pixels * dim**2 + 2 * pixels**2 * dim)


def _vit_input(dim: int) -> Callable[[int], tuple[int, ...]]:
    return lambda side: (1, (side // PATCH_SIZE) ** 2 + 1, dim)


DESIGNS.add(
    "pixel",
    Design(
        "pixel transformer (mhsa)",
        _pixel_cost,
        lambda dim, heads: (create_block("mhsa", dim, num_heads=heads), _tokens(dim)),
    ),
)
DESIGNS.add(
    "graph",
    Design(
        "graph attention on pixels",
        _graph_cost,
        lambda dim, heads: (create_block("graph", dim, num_heads=heads), _tokens(dim)),
    ),
)
DESIGNS.add(
    "vit",
    Design(
        f"ViT, {PATCH_SIZE}×{PATCH_SIZE} patches",
        _vit_cost,
        lambda dim, heads: (create_block("mhsa", dim, num_heads=heads), _vit_input(dim)),
    ),
)
DESIGNS.add(
    "local",
    Design(
        f"SASA local {KERNEL_SIZE}×{KERNEL_SIZE}",
        _local_cost,
        lambda dim, heads: (create_block("local", dim, num_heads=heads, kernel_size=KERNEL_SIZE), _map(dim)),
    ),
)
DESIGNS.add(
    "window",
    Design(
        f"Swin windows {WINDOW_SIZE}×{WINDOW_SIZE}",
        _window_cost,
        lambda dim, heads: (create_block("window", dim, num_heads=heads, window_size=WINDOW_SIZE), _map(dim)),
    ),
)
DESIGNS.add(
    "non_local",
    Design("non-local", _non_local_cost, lambda dim, heads: (create_block("non_local", dim), _map(dim))),
)


def measured_cost(design: str, side: int, dim: int, heads: int) -> LayerCost:
    """The layer's attention entries (recorded probabilities) and FLOPs (``flop_counter``), measured on one image.

    Runs the block once on a random input: use it only for sizes that fit in memory.
    """
    block, input_shape = DESIGNS.get(design).block(dim, heads)
    block.eval()
    shape = input_shape(side)
    with torch.no_grad(), record_attention(block) as records:
        block(torch.randn(*shape))
    entries = sum(probabilities.numel() for calls in records.values() for probabilities in calls)
    return LayerCost(entries, flops(block, shape))
