"""SASA local self-attention (Ramachandran et al. 2019): each pixel attends to its k×k neighbourhood.

Per head, for the pixel at (i, j) with query ``q_ij``::

    y_ij = Σ_{(a, b) ∈ N_k(i, j)} softmax_ab(q_ij · k_ab + q_ij · r_{a-i, b-j}) v_ab

where ``r_{a-i, b-j}`` concatenates a row-offset embedding and a column-offset embedding, each half of the head
dim (the paper's 2-D relative embedding, added to the key logits). There is no 1/√d scale, as in the paper.

Border rule: neighbours outside the image are excluded — the softmax runs over the part of the k×k window that
lies inside the image (no zero-padded keys diluting the attention).

Implementation: the map is cut into ``block_size``² query blocks; each block attends to its halo of
(block_size + k − 1)² keys through ``F.scaled_dot_product_attention`` with a neighbourhood mask. The relative
term is folded into the dot product by appending, per query, its row/column offset logits to the query and a
one-hot of each key's halo row/column to the key, so the result is exactly the k×k definition above.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, attend, check_divisible, check_odd
from attngraft.blocks.factory import register_block
from attngraft.blocks.recording import AttentionProbe


def check_local_heads(owner: str, out_dim: int, num_heads: int, kernel_size: int) -> int:
    """Validates the options of a k×k attention with 2-D relative embeddings; returns the head dim."""
    head_dim = check_divisible(owner, out_dim, num_heads)
    if head_dim % 2:
        raise ValueError(f"{owner}: head dim {head_dim} must be even (half for rows, half for columns)")
    check_odd(owner, "kernel_size", kernel_size)
    return head_dim


def relative_embeddings(num_heads: int, kernel_size: int, head_dim: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Row- and column-offset embeddings, each (heads, k, head_dim // 2), with std 1/√head_dim."""
    return (
        nn.Parameter(torch.randn(num_heads, kernel_size, head_dim // 2) * head_dim**-0.5),
        nn.Parameter(torch.randn(num_heads, kernel_size, head_dim // 2) * head_dim**-0.5),
    )


def _offset_tables(block_size: int, halo: int, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For local query row y and halo row j: the offset index j − y and whether it lies in [0, kernel_size)."""
    offsets = torch.arange(halo)[None, :] - torch.arange(block_size)[:, None]  # (b, halo)
    return offsets.clamp(0, kernel_size - 1), (offsets >= 0) & (offsets < kernel_size)


def _grid(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every cell of a side×side grid, in row-major order: two (side²,) tensors."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return rows.flatten(), cols.flatten()


def neighbourhood_mask(height: int, width: int, block_size: int, kernel_size: int) -> torch.Tensor:
    """Which halo keys each query of each block may attend to: inside its k×k window and inside the image.

    A query always may attend to its own position, so queries in the padding never see an empty row.

    Returns:
        Boolean (blocks, block_size², halo²) with halo = block_size + kernel_size − 1.
    """
    radius, halo = kernel_size // 2, block_size + kernel_size - 1
    query_rows, query_cols = (axis[:, None] for axis in _grid(block_size))
    key_rows, key_cols = (axis[None, :] for axis in _grid(halo))
    row_offset, col_offset = key_rows - query_rows - radius, key_cols - query_cols - radius
    near = (row_offset.abs() <= radius) & (col_offset.abs() <= radius)  # (b², halo²)
    itself = (row_offset == 0) & (col_offset == 0)
    padded_height, padded_width = -(-height // block_size) * block_size, -(-width // block_size) * block_size
    image = F.pad(
        torch.ones(1, 1, height, width),
        (radius, radius + padded_width - width, radius, radius + padded_height - height),
    )
    inside = F.unfold(image, halo, stride=block_size)[0].T > 0  # (blocks, halo²)
    return (near[None] & inside[:, None, :]) | itself[None]


def _window_probabilities(
    probabilities: torch.Tensor, batch: int, heads: int, height: int, width: int, size: int, kernel_size: int
) -> torch.Tensor:
    """Halo layout (B·heads, blocks, b², halo²) → each pixel's k×k window (B, heads, H, W, k, k)."""
    halo = size + kernel_size - 1
    local_rows, local_cols = (axis[:, None] for axis in _grid(size))
    offset_rows, offset_cols = (axis[None, :] for axis in _grid(kernel_size))
    index = ((local_rows + offset_rows) * halo + local_cols + offset_cols).to(probabilities.device)  # (b², k²)
    windows = probabilities.gather(-1, index.expand(*probabilities.shape[:2], -1, -1))  # (BH, blocks, b², k²)
    rows, cols = -(-height // size), -(-width // size)
    windows = windows.view(batch, heads, rows, cols, size, size, kernel_size, kernel_size).permute(
        0, 1, 2, 4, 3, 5, 6, 7
    )
    return windows.reshape(batch, heads, rows * size, cols * size, kernel_size, kernel_size)[:, :, :height, :width]


def local_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_cols: torch.Tensor,
    probe: AttentionProbe,
    block_size: int,
) -> torch.Tensor:
    """SASA k×k attention with 2-D relative embeddings, computed blockwise with halos.

    Args:
        query: (B, heads, head_dim, H, W).
        key: (B, heads, head_dim, H, W).
        value: (B, heads, head_dim, H, W).
        rel_rows: Row-offset embeddings (heads, k, head_dim // 2).
        rel_cols: Column-offset embeddings (heads, k, head_dim // 2).
        probe: Receives the probabilities as (B, heads, H, W, k, k) when recording.
        block_size: Query block side.

    Returns:
        (B, heads, head_dim, H, W).
    """
    batch, heads, head_dim, height, width = query.shape
    kernel_size, half = rel_rows.shape[1], head_dim // 2
    size, radius = block_size, kernel_size // 2
    halo = size + kernel_size - 1
    pad_bottom, pad_right = -height % size, -width % size
    rows, cols = (height + pad_bottom) // size, (width + pad_right) // size
    blocks = rows * cols

    def halos(tensor: torch.Tensor) -> torch.Tensor:
        padded = F.pad(tensor.flatten(0, 1), (radius, radius + pad_right, radius, radius + pad_bottom))
        unfolded = F.unfold(padded, halo, stride=size)  # (B*heads, head_dim*halo², blocks)
        return unfolded.view(batch * heads, head_dim, halo * halo, blocks).permute(0, 3, 2, 1)  # (BH, blocks, S, hd)

    padded_query = F.pad(query, (0, pad_right, 0, pad_bottom))
    query_blocks = padded_query.view(batch * heads, head_dim, rows, size, cols, size).permute(0, 2, 4, 3, 5, 1)
    # query_blocks: (BH, rows, cols, y, x, head_dim)
    offset_index, offset_valid = _offset_tables(size, halo, kernel_size)
    offset_valid = offset_valid.to(query.dtype).to(query.device)[None, :, :, None]
    row_table = rel_rows[:, offset_index] * offset_valid  # (heads, y, halo, half): embedding of halo row j for row y
    col_table = rel_cols[:, offset_index] * offset_valid  # (heads, x, halo, half)
    grouped = query_blocks.reshape(batch, heads, rows, cols, size, size, head_dim)
    row_logits = torch.einsum("bhmnyxd,hyjd->bhmnyxj", grouped[..., :half], row_table)  # (B, h, rows, cols, y, x, halo)
    col_logits = torch.einsum("bhmnyxd,hxjd->bhmnyxj", grouped[..., half:], col_table)
    augmented_query = torch.cat([grouped, row_logits, col_logits], dim=-1).reshape(
        batch * heads, blocks, size * size, -1
    )
    one_hot = torch.eye(halo, dtype=query.dtype, device=query.device)
    key_position = torch.cat([one_hot.repeat_interleave(halo, 0), one_hot.repeat(halo, 1)], dim=-1)  # (halo², 2·halo)
    augmented_key = torch.cat([halos(key), key_position.expand(batch * heads, blocks, -1, -1)], dim=-1)
    mask = neighbourhood_mask(height, width, size, kernel_size).to(query.device)  # (blocks, b², halo²)
    as_windows = partial(
        _window_probabilities, batch=batch, heads=heads, height=height, width=width, size=size, kernel_size=kernel_size
    )
    out = attend(augmented_query, augmented_key, halos(value), probe, mask=mask, scale=1.0, record_as=as_windows)
    out = out.view(batch, heads, rows, cols, size, size, head_dim).permute(0, 1, 6, 2, 4, 3, 5)
    return out.reshape(batch, heads, head_dim, rows * size, cols * size)[..., :height, :width]


@register_block("local")
class LocalSelfAttention(Block):
    """SASA stand-alone local self-attention over each pixel's k×k neighbourhood (see the module docstring).

    A drop-in for a k×k spatial convolution: 1×1 projections to queries, keys and values, multi-head k×k
    attention with 2-D relative embeddings, and, with ``stride=2``, 2×2 average pooling after the attention.

    Args:
        dim: Input channels C.
        out_dim: Output channels; default C. Must be divisible by ``num_heads``, with an even head dim.
        num_heads: Attention heads.
        kernel_size: Odd neighbourhood side k.
        stride: 1, or 2 for 2×2 average pooling after the attention (as in the paper).
        qkv_bias: Bias in the 1×1 projections (the paper has none).
        block_size: Query block side of the blockwise computation (speed/memory only; results are identical).

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, out_dim, H / stride, W / stride).
    """

    layout = "map"
    family = "local"

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        num_heads: int = 8,
        kernel_size: int = 7,
        stride: int = 1,
        qkv_bias: bool = False,
        block_size: int = 8,
    ) -> None:
        super().__init__(dim)
        owner = type(self).__name__
        self.out_dim = out_dim or dim
        self.num_heads = num_heads
        self.head_dim = check_local_heads(owner, self.out_dim, num_heads, kernel_size)
        if stride not in (1, 2):
            raise ValueError(f"{owner}: stride must be 1 or 2, got {stride}")
        if block_size < 1:
            raise ValueError(f"{owner}: block_size must be positive, got {block_size}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.block_size = block_size
        self.qkv = nn.Conv2d(dim, 3 * self.out_dim, kernel_size=1, bias=qkv_bias)
        self.rel_rows, self.rel_cols = relative_embeddings(num_heads, kernel_size, self.head_dim)
        self.probe = AttentionProbe()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, _, height, width = x.shape
        qkv = self.qkv(x).view(batch, 3, self.num_heads, self.head_dim, height, width)
        query, key, value = qkv.unbind(1)  # (B, heads, head_dim, H, W) each
        out = local_attention(query, key, value, self.rel_rows, self.rel_cols, self.probe, self.block_size)
        out = out.reshape(batch, self.out_dim, height, width)  # (B, out_dim, H, W)
        return F.avg_pool2d(out, 2) if self.stride == 2 else out

    @override
    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
