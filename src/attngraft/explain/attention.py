"""Attention maps over the image from the probabilities the blocks record.

Token blocks (``mhsa``, ``graph``, ``reattention``) give (B, heads, N, N) maps over a transformer's tokens; their
layers combine by attention rollout (Abnar & Zuidema 2020) and the class token's row, over the patch grid, becomes
a map on the image. Map blocks give, for a chosen query pixel, the distribution over the pixels it attends to
(``local``-family blocks over its k×k window, ``window`` over its (shifted) Swin window, ``non_local`` over the
whole, possibly subsampled, map): each block draws its own (:meth:`attngraft.blocks.Block.query_attention`), so a
new block needs nothing here.

Recording uses :func:`attngraft.blocks.record_attention`: the blocks take their probability-materialising path
only inside it; the hooks are removed afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attngraft.blocks import AttentionProbe, Block, record_attention
from attngraft.errors import ConfigError

KINDS = ("tokens", "map")


@dataclass(frozen=True)
class AttentionRecord:
    """The probabilities one block produced in one forward call.

    Attributes:
        name: The block's module path.
        kind: "tokens" (a token mixer's (B, heads, N, N) matrices) or "map" (a map block that draws query maps:
            :meth:`attngraft.blocks.Block.query_attention`).
        probabilities: As the block's probe received them (see each kind's layout in the module docstring).
        map_size: The block's input map (H, W) for map blocks; the patch grid (rows, cols) for token blocks.
        prefix_tokens: Class/distillation tokens ahead of the patches (token blocks; 0 for map blocks).
        block: The block module.
    """

    name: str
    kind: str
    probabilities: torch.Tensor
    map_size: tuple[int, int]
    prefix_tokens: int
    block: nn.Module


def record(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[AttentionRecord]]:
    """Runs ``model`` on ``images`` without gradients and returns its output and every block's attention.

    Shape:
        - images: (B, C, H, W).

    Returns:
        The model's output and one :class:`AttentionRecord` per attention block call, in forward order.
    """
    owners = _probe_owners(model)
    inputs: dict[str, list[tuple[int, ...]]] = {name: [] for name in owners}
    handles = [module.register_forward_pre_hook(_shape_hook(inputs[name])) for name, module in owners.items()]
    try:
        with record_attention(model) as records, torch.no_grad():
            output = model(images)
    finally:
        for handle in handles:
            handle.remove()
    found = []
    for probe_name, calls in records.items():
        name = probe_name.rpartition(".")[0]
        if name not in owners:  # a probe stored under another attribute name: its layout is unknown
            continue
        for call, probabilities in enumerate(calls):
            shape = inputs[name][call] if call < len(inputs[name]) else ()
            found.append(_describe(model, name, owners[name], probabilities, shape, images.shape[-2:]))
    return output, [record for record in found if record is not None]


def _probe_owners(model: nn.Module) -> dict[str, nn.Module]:
    """Module path → module, for every module that owns an :class:`AttentionProbe` as ``probe``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "probe", None), AttentionProbe)
    }


def _shape_hook(shapes: list[tuple[int, ...]]) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    """A forward pre-hook that appends the shape of its module's first input to ``shapes``."""

    def hook(module: nn.Module, args: tuple[object, ...]) -> None:
        first = args[0] if args else None
        shapes.append(tuple(first.shape) if isinstance(first, torch.Tensor) else ())

    return hook


def _describe(
    model: nn.Module,
    name: str,
    block: nn.Module,
    probabilities: torch.Tensor,
    input_shape: tuple[int, ...],
    image_size: Sequence[int],
) -> AttentionRecord | None:
    """The record of one call, or None for a block whose layout this module does not know."""
    if getattr(block, "layout", None) == "tokens" and probabilities.ndim == 4:
        prefix, grid = token_layout(model, name, probabilities.shape[-1], (int(image_size[0]), int(image_size[1])))
        return AttentionRecord(name, "tokens", probabilities, grid, prefix, block)
    if len(input_shape) != 4 or not (isinstance(block, Block) and block.draws_query_maps()):
        return None
    return AttentionRecord(name, "map", probabilities, (input_shape[2], input_shape[3]), 0, block)


def token_layout(model: nn.Module, name: str, tokens: int, image_size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """The prefix-token count and patch grid of the token block ``name`` that mixes ``tokens`` tokens.

    The nearest enclosing module with ``num_prefix_tokens`` (attngraft's and timm's ViTs) gives the prefix and,
    when it matches, its ``grid_size``; otherwise the grid takes the image's aspect ratio.

    Raises:
        ConfigError: When the patch tokens do not form a grid of the image's aspect ratio.
    """
    parts = name.split(".")
    prefix, grid = 0, None
    for depth in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:depth]))
        if hasattr(owner, "num_prefix_tokens"):
            prefix = int(getattr(owner, "num_prefix_tokens"))  # noqa: B009  # not a typed attribute of Module
            grid = getattr(owner, "grid_size", None)
            break
    patches = tokens - prefix
    if grid is not None and grid[0] * grid[1] == patches:
        return prefix, (int(grid[0]), int(grid[1]))
    rows = round(math.sqrt(patches * image_size[0] / image_size[1]))
    if rows < 1 or patches % rows:
        raise ConfigError(
            f"{name}: {patches} patch tokens do not form a grid of a {image_size[0]}×{image_size[1]} image"
        )
    return prefix, (rows, patches // rows)


def rollout(layers: Sequence[torch.Tensor], *, residual: float = 0.5, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout: ``R = Â_L ⋯ Â_1`` with ``Â = (1 − α) fuse(A) + α I``, rows renormalised.

    The identity term accounts for the residual connection around each attention layer.

    Args:
        layers: Each layer's probabilities (B, heads, N, N), first layer first.
        residual: α, the weight of the residual path.
        head_fusion: "mean" or "max" over heads.

    Shape:
        - Output: (B, N, N); every row sums to 1.
    """
    if head_fusion not in ("mean", "max"):
        raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")
    if not layers:
        raise ValueError("rollout needs at least one layer")
    tokens = layers[0].shape[-1]
    identity = torch.eye(tokens, dtype=layers[0].dtype, device=layers[0].device)
    result = identity.expand(layers[0].shape[0], tokens, tokens)
    for attention in layers:
        fused = attention.mean(dim=1) if head_fusion == "mean" else attention.amax(dim=1)  # (B, N, N)
        fused = (1 - residual) * fused + residual * identity
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = fused @ result
    return result


def token_map(attention: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """What the class token attends to over the patch grid.

    With several prefix tokens (DeiT predicts from its class and distillation tokens alike) their rows are averaged;
    without prefix tokens, every query's row.

    Shape:
        - attention: (B, N, N), or (B, heads, N, N) for one map per head.
        - Output: (B, rows, cols) or (B, heads, rows, cols), each map summing to 1.
    """
    queries = attention[..., :prefix_tokens, prefix_tokens:] if prefix_tokens > 0 else attention
    row = queries.mean(dim=-2)  # (..., patches)
    row = row / row.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(row.dtype).tiny)
    return row.reshape(*row.shape[:-1], *grid)  # (..., rows, cols)


def query_map(record: AttentionRecord, queries: torch.Tensor) -> torch.Tensor:
    """Where each image's query pixel attends, per head, on the block's key map.

    The block draws it (:meth:`attngraft.blocks.Block.query_attention`).

    Args:
        record: A map block's record.
        queries: (B, 2) integer (row, col) of the query pixel in the block's map.

    Shape:
        - Output: (B, heads, H, W) for local and window blocks, (B, 1, H', W') for non-local ones (H' = H / 2 when
          subsampled). Softmax maps sum to 1; a dot-product non-local block's row is its affinities divided by the
          number of keys.
    """
    block = record.block
    if record.kind != "map" or not isinstance(block, Block):
        raise ValueError(f"{record.name}: query maps are for map blocks, not {record.kind!r} blocks")
    return torch.stack(
        [
            block.query_attention(record.probabilities[index], (int(row), int(col)), record.map_size)
            for index, (row, col) in enumerate(queries)
        ]
    )


def to_image(maps: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (..., h, w) maps to the image's (..., H, W)."""
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()  # (N, 1, h, w)
    resized = F.interpolate(flat, size=image_size, mode="bilinear", align_corners=False)
    return resized.reshape(*leading, *image_size)


def map_position(pixel: tuple[int, int], image_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int]:
    """The map cell (row, col) that covers image pixel ``pixel`` when the map spans the whole image."""
    return (
        min(pixel[0] * map_size[0] // image_size[0], map_size[0] - 1),
        min(pixel[1] * map_size[1] // image_size[1], map_size[1] - 1),
    )
