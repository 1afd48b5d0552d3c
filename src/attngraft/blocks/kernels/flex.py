"""k×k neighbourhood attention through ``torch.nn.attention.flex_attention``: the CUDA backend.

Every pixel is a token; a block mask keeps each query's k×k window (``mask_mod``), so the compiled kernel skips
the blocks of the P × P matrix that hold no neighbour, and ``score_mod`` adds the row, column and offset terms
for the pair's offset. On CUDA the kernel is compiled (Triton) on first use per shape; elsewhere flex_attention
runs eagerly, materialising the scores, which is how it is tested on CPU against the reference.

Head dims are zero-padded to a power of two of at least 16 (zeros add nothing to the dot products; the padded
value channels are dropped), as the compiled kernels require.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, cast

import torch
import torch.nn.functional as F

from attngraft.blocks.kernels.reference import embedding_terms


def _padded_dim(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())


def _tokens(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, heads, D, H, W) → (B, heads, P, dim), P = H·W row-major, channels zero-padded to ``dim``."""
    tokens = x.flatten(3).transpose(2, 3)  # (B, heads, P, D)
    return F.pad(tokens, (0, dim - tokens.shape[-1]))


@cache
def _flex() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    compiled: Callable[..., Any] = torch.compile(flex_attention, dynamic=False)
    return compiled


@cache
def _block_mask(height: int, width: int, kernel_size: int, device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    radius = kernel_size // 2

    def inside_window(batch: Any, head: Any, query: Any, key: Any) -> Any:
        rows = (key // width - query // width).abs()
        cols = (key % width - query % width).abs()
        return (rows <= radius) & (cols <= radius)

    pixels = height * width
    return create_block_mask(inside_window, B=None, H=None, Q_LEN=pixels, KV_LEN=pixels, device=str(device))


def neighbourhood_attention_flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    row_embedding: torch.Tensor | None = None,
    col_embedding: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention of :func:`attngraft.blocks.kernels.neighbourhood_attention` with flex_attention.

    Shape:
        query, key: (B, heads, D, H, W); value: (B, heads, Dv, H, W). Returns (B, heads, Dv, H, W).
    """
    from torch.nn.attention.flex_attention import flex_attention

    batch, heads, query_dim, height, width = query.shape
    value_dim, radius, last = value.shape[2], kernel_size // 2, kernel_size - 1
    rows, cols = embedding_terms(query, row_embedding, col_embedding)  # (B, heads, k, H, W) or None
    row_terms = None if rows is None else rows.flatten(3).transpose(2, 3)  # (B, heads, P, k)
    col_terms = None if cols is None else cols.flatten(3).transpose(2, 3)

    def relative(score: Any, b: Any, h: Any, query_index: Any, key_index: Any) -> Any:
        row = (key_index // width - query_index // width + radius).clamp(0, last)  # masked pairs: any valid index
        col = (key_index % width - query_index % width + radius).clamp(0, last)
        if row_terms is not None:
            score = score + row_terms[b, h, query_index, row]
        if col_terms is not None:
            score = score + col_terms[b, h, query_index, col]
        if offset_bias is not None:
            score = score + offset_bias[h, row * kernel_size + col]
        return score

    dim = _padded_dim(max(query_dim, value_dim))
    attend = _flex() if query.device.type == "cuda" else cast("Callable[..., Any]", flex_attention)
    out = attend(
        _tokens(query, dim), _tokens(key, dim), _tokens(value, dim),
        score_mod=relative, block_mask=_block_mask(height, width, kernel_size, query.device), scale=1.0,
    )  # fmt: skip
    # out: (B, heads, P, dim)
    return out[..., :value_dim].transpose(2, 3).reshape(batch, heads, value_dim, height, width)
