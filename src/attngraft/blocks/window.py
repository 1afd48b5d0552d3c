"""Swin (shifted) window attention (Liu et al. 2021) on feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import (
    Block,
    attend,
    check_divisible,
    relative_position_index,
    window_merge,
    window_partition,
)
from attngraft.blocks.factory import register_block
from attngraft.blocks.recording import AttentionProbe


def window_attention_mask(
    height: int, width: int, window_size: int, shift_size: int, pad: tuple[int, int]
) -> torch.Tensor:
    """Which keys each query of each window may attend to, on the padded (and shifted) grid.

    A key is allowed when it lies in the same region as the query before the cyclic shift (so shifted windows
    never mix pixels that are far apart in the image) and is not padding. Every query may attend to itself, so
    rows of padding-only regions stay finite.

    Args:
        height: Padded height (multiple of window_size).
        width: Padded width (multiple of window_size).
        window_size: Window side.
        shift_size: Cyclic shift (0 for regular windows).
        pad: (bottom, right) rows/columns of padding inside the padded grid.

    Returns:
        Boolean (windows, ws², ws²); True = attend.
    """
    region = torch.zeros(height, width)
    if shift_size > 0:
        bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        label = 0
        for rows in bounds:
            for cols in bounds:
                region[rows, cols] = label
                label += 1
    valid = torch.ones(height, width, dtype=torch.bool)
    valid[height - pad[0] :, :] = False
    valid[:, width - pad[1] :] = False
    if shift_size > 0:
        valid = valid.roll((-shift_size, -shift_size), dims=(0, 1))
    region_windows = window_partition(region[None, :, :, None], window_size)[..., 0]  # (nW, ws²)
    valid_windows = window_partition(valid[None, :, :, None].float(), window_size)[..., 0].bool()  # (nW, ws²)
    same_region = region_windows[:, :, None] == region_windows[:, None, :]  # (nW, ws², ws²)
    allowed = same_region & valid_windows[:, None, :]
    return allowed | torch.eye(window_size * window_size, dtype=torch.bool)


@register_block("window")
class WindowAttention(Block):
    """Multi-head self-attention within non-overlapping windows, with a learned relative position bias.

    With ``shift_size > 0`` the map is cyclically shifted before partitioning and masked so that windows only
    mix pixels that are adjacent in the image (Swin's shifted windows). Maps whose sides are not multiples of
    the window are padded at the bottom/right; padded pixels are never attended to, so outputs do not depend on
    the padding.

    Args:
        dim: Channels C.
        num_heads: Attention heads; must divide ``dim``.
        window_size: Window side (tokens per window: window_size²).
        shift_size: Cyclic shift, in [0, window_size); Swin alternates 0 and window_size // 2.
        qkv_bias: Bias in the query/key/value projection.
        attn_drop: Dropout on the attention probabilities (training only).
        proj_drop: Dropout after the output projection.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    layout = "map"
    family = "window"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        window_size: int = 7,
        shift_size: int = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim)
        if window_size < 1 or not 0 <= shift_size < window_size:
            raise ValueError(
                f"WindowAttention: need window_size >= 1 and 0 <= shift_size < window_size, "
                f"got window_size={window_size}, shift_size={shift_size}"
            )
        self.num_heads = num_heads
        self.head_dim = check_divisible(type(self).__name__, dim, num_heads)
        self.window_size = window_size
        self.shift_size = shift_size
        self.relative_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_bias_table, std=0.02)
        self.register_buffer("relative_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.probe = AttentionProbe()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def relative_bias(self) -> torch.Tensor:
        """The relative position bias of one window: (heads, ws², ws²)."""
        tokens = self.window_size**2
        index: torch.Tensor = self.relative_index  # type: ignore[assignment]
        return self.relative_bias_table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)

    def window_mask(
        self, height: int, width: int, pad: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Additive mask of every (window, head): relative bias where allowed, -inf elsewhere: (nW*heads, T, T)."""
        allowed = window_attention_mask(height, width, self.window_size, self.shift_size, pad).to(device)
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        mask = self.relative_bias().to(dtype)[None] + blocked[:, None]  # (nW, heads, T, T)
        return mask.flatten(0, 1)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, channels, height, width = x.shape
        size, shift = self.window_size, self.shift_size
        pad = (-height % size, -width % size)
        grid = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pad[1], 0, pad[0]))  # (B, Hp, Wp, C)
        padded_height, padded_width = grid.shape[1:3]
        if shift:
            grid = grid.roll((-shift, -shift), dims=(1, 2))
        windows = window_partition(grid, size)  # (B*nW, T, C) with T = ws²
        num_windows, tokens = windows.shape[0] // batch, size * size
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch, num_windows * self.num_heads, tokens, self.head_dim)
        query, key, value = qkv.unbind(0)  # (B, nW*heads, T, hd) each: every (window, head) attends alone
        mask = self.window_mask(padded_height, padded_width, pad, x.device, query.dtype)  # (nW*heads, T, T)
        dropout = self.attn_drop if self.training else 0.0
        out = attend(query, key, value, self.probe, mask=mask, dropout=dropout)  # (B, nW*heads, T, hd)
        out = out.view(batch, num_windows, self.num_heads, tokens, self.head_dim).transpose(2, 3)
        out = out.reshape(batch * num_windows, tokens, channels)  # (B*nW, T, C)
        grid = window_merge(self.proj_drop(self.proj(out)), size, padded_height, padded_width)  # (B, Hp, Wp, C)
        if shift:
            grid = grid.roll((shift, shift), dims=(1, 2))
        return grid[:, :height, :width].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

    @override
    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift_size}"
