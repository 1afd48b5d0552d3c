"""Swin (shifted) window attention (Liu et al. 2021) on feature maps."""

from __future__ import annotations

from functools import cache
from typing import Any

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
    window_partition,
)
from attngraft.blocks.cost import GRADIENTS, CostConfig, CostEntry, LayerCost
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


@cache
def _window_token_order(
    height: int, width: int, window_size: int, shift_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):  # cached: must not be inference tensors, which training could not save
        positions = torch.arange(height * width).view(1, height, width, 1)
        if shift_size:
            positions = positions.roll((-shift_size, -shift_size), dims=(1, 2))
        order = window_partition(positions, window_size).flatten()  # (Hp·Wp,)
        return order, order.argsort()


def window_token_order(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token of the shifted, partitioned grid comes from, and the inverse permutation.

    ``grid.flatten(1, 2)[:, order]`` equals ``window_partition(grid.roll(−shift), ws)`` flattened (window-major,
    row-major within each window); ``[:, inverse]`` undoes it, roll included. One gather each way instead of a roll
    and a partition copy.

    Returns:
        order, inverse: (H·W,) int64 on ``device``; H and W are the padded sides.
    """
    order, inverse = _window_token_order(height, width, window_size, shift_size)
    return order.to(device), inverse.to(device)


class _Permute(torch.autograd.Function):
    """``x.index_select(1, order)`` for a permutation ``order``, whose backward is the inverse gather.

    (Autograd's generic backward of ``index_select``, a scatter-add, was ~5× slower on CPU.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """Tokens of (B, N, C) in ``order``."""
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """The gradient gathered back through the inverse permutation."""
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def permute_tokens(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(B, N, C) → (B, N, C) with token i taken from ``order[i]``; ``inverse`` is the inverse permutation."""
    out: torch.Tensor = _Permute.apply(x, order, inverse)
    return out


# Elements of the attention matrices one training chunk materialises (see WindowAttention._attend).
CHUNK_ELEMENTS = 1 << 22


def window_cost(side: int, config: CostConfig) -> LayerCost:
    """Attention within w×w windows of the padded map (P pixels): projections, QKᵀ and PV per window.

    Kept: the probabilities and the two token orders (int64, 4P four-byte elements).
    """
    window, dim, heads = config.window, config.dim, config.heads
    padded = (-(-side // window) * window) ** 2
    return LayerCost(
        heads * padded * window**2,
        8 * padded * dim**2 + 4 * padded * dim * window**2,
        6 * padded * dim + heads * padded * window**2 + 4 * padded,
    )


@register_block("window")
class WindowAttention(Block):
    """Multi-head self-attention within non-overlapping windows, with a learned relative position bias.

    With ``shift_size > 0`` the map is cyclically shifted before partitioning and masked so that windows only
    mix pixels that are adjacent in the image (Swin's shifted windows); a map that fits in one window is not
    shifted (as in Swin and timm: there is nothing to connect across windows). Maps whose sides are not multiples of
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
    cost_entry = CostEntry(
        title=lambda config: f"Swin windows {config.window}×{config.window}",
        cost=window_cost,
        options=lambda config: {"num_heads": config.heads, "window_size": config.window},
        backward=f"{GRADIENTS}; the gradient of its kept bias-and-mask matrix",
    )

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

    def shift_for(self, height: int, width: int) -> int:
        """The shift used on an H×W map: none when the map fits in one window (as Swin and timm do)."""
        return 0 if height <= self.window_size and width <= self.window_size else self.shift_size

    def window_mask(
        self, height: int, width: int, pad: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Additive mask of every (window, head): relative bias where allowed, -inf elsewhere: (nW*heads, T, T).

        ``height`` and ``width`` are the padded sides; the shift is that of the unpadded map.
        """
        shift = self.shift_for(height - pad[0], width - pad[1])
        allowed = window_attention_mask(height, width, self.window_size, shift, pad).to(device)
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        mask = self.relative_bias().to(dtype)[None] + blocked[:, None]  # (nW, heads, T, T)
        return mask.flatten(0, 1)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, channels, height, width = x.shape
        size, shift = self.window_size, self.shift_for(height, width)
        pad = (-height % size, -width % size)
        grid = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if pad != (0, 0):
            grid = F.pad(grid, (0, 0, 0, pad[1], 0, pad[0]))  # (B, Hp, Wp, C)
        padded_height, padded_width = grid.shape[1:3]
        order, inverse = window_token_order(padded_height, padded_width, size, shift, x.device)
        # The cyclic shift and the window partition in one gather: (B, Hp·Wp, C) in window-major token order.
        windows = permute_tokens(grid.reshape(batch, -1, channels), order, inverse).view(-1, size * size, channels)
        num_windows, tokens = windows.shape[0] // batch, size * size  # windows: (B*nW, T, C) with T = ws²
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch, num_windows * self.num_heads, tokens, self.head_dim)
        query, key, value = qkv.unbind(0)  # (B, nW*heads, T, hd) each: every (window, head) attends alone
        mask = self.window_mask(padded_height, padded_width, pad, x.device, query.dtype)  # (nW*heads, T, T)
        out = self._attend(query, key, value, mask)  # (B, nW*heads, T, hd)
        out = out.view(batch, num_windows, self.num_heads, tokens, self.head_dim).transpose(2, 3)
        out = out.reshape(batch * num_windows, tokens, channels)  # (B*nW, T, C)
        projected = self.proj_drop(self.proj(out)).view(batch, num_windows * tokens, channels)
        grid = permute_tokens(projected, inverse, order).view(batch, padded_height, padded_width, channels)  # unshifted
        return grid[:, :height, :width].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention within every (window, head), (B, nW·heads, T, hd) each; mask (nW·heads, T, T) carries the bias.

        SDPA's fused CPU kernel cannot differentiate a mask, and the relative bias in the mask is learned, so training
        materialises the (B, nW·heads, T, T) matrices; it does so one batch chunk of about :data:`CHUNK_ELEMENTS`
        at a time (cache-sized: ~2× faster than all at once on CPU) with a plain softmax (every query may attend
        to itself, so no row is empty and SDPA's guarded softmax is not needed). Without gradients the fused kernel
        runs (it needs a 4-d mask).
        """
        dropout = self.attn_drop if self.training else 0.0
        if self.probe.enabled:  # one call, so the probe records the whole batch at once
            return attend(query, key, value, self.probe, mask=mask, dropout=dropout)
        if not (torch.is_grad_enabled() and (mask.requires_grad or query.requires_grad)):
            return attend(query, key, value, self.probe, mask=mask[None], dropout=dropout)
        windows_heads, tokens = query.shape[1:3]
        chunk = max(1, CHUNK_ELEMENTS // (windows_heads * tokens * tokens))
        scale = self.head_dim**-0.5
        parts = []
        chunks = (torch.split(tensor, chunk) for tensor in (query, key, value))  # split: one cat in the backward
        for queries, keys, values in zip(*chunks, strict=True):
            logits = (queries * scale) @ keys.transpose(-2, -1) + mask  # (chunk, nW·heads, T, T)
            parts.append(F.dropout(logits.softmax(-1), dropout) @ values)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @override
    def query_attention(
        self, probabilities: torch.Tensor, query: tuple[int, int], map_size: tuple[int, int]
    ) -> torch.Tensor:
        """One pixel's row of its window, (windows·heads, T, T) recorded, mapped back through the shift and padding."""
        height, width = map_size
        size, shift, heads = self.window_size, self.shift_for(height, width), self.num_heads
        padded = (height + (-height % size), width + (-width % size))
        rolled = ((query[0] - shift) % padded[0], (query[1] - shift) % padded[1])  # the grid was rolled by −shift
        window = (rolled[0] // size) * (padded[1] // size) + rolled[1] // size
        token = (rolled[0] % size) * size + rolled[1] % size
        row = probabilities[window * heads : (window + 1) * heads, token]  # (heads, T)
        top, left = rolled[0] - rolled[0] % size, rolled[1] - rolled[1] % size
        positions = torch.arange(size, device=row.device)
        rows = (top + positions + shift) % padded[0]
        cols = (left + positions + shift) % padded[1]
        canvas = row.new_zeros(heads, *padded)
        canvas[:, rows[:, None], cols[None, :]] = row.reshape(heads, size, size)
        return canvas[:, :height, :width]  # (heads, H, W)

    @override
    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift_size}"
