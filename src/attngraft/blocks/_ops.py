"""Pieces shared by the attention blocks.

The block base class, option checks, head split/merge, the attend step (fused or probability-exposing), window
partitioning and the zero-initialised residual gate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from attngraft.blocks.cost import CostEntry
from attngraft.blocks.recording import AttentionProbe

Layout = Literal["tokens", "map"]
LAYOUT_SHAPES: dict[str, str] = {"tokens": "(B, N, C)", "map": "(B, C, H, W)"}


class Block(nn.Module):
    """Base class of attngraft's blocks: holds the channel dim and checks the input layout.

    Subclasses set ``layout`` ("tokens" for ``(B, N, C)``, "map" for ``(B, C, H, W)``) and ``family``.
    """

    layout: ClassVar[Layout]
    family: ClassVar[str]
    # The analytic cost ``attngraft cost`` tabulates and checks against the block (None: not costed there).
    cost_entry: ClassVar[CostEntry | None] = None

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be a positive integer, got {dim!r}")
        self.dim = dim

    def attention_flops(self, input_shape: torch.Size) -> int:
        """FLOPs of work that ``torch.utils.flop_counter`` cannot see (elementwise attention); 0 by default."""
        return 0

    def query_attention(
        self, probabilities: torch.Tensor, query: tuple[int, int], map_size: tuple[int, int]
    ) -> torch.Tensor:
        """Where one query pixel attends, from what this block's probe recorded for one image (what ``explain`` draws).

        Args:
            probabilities: One image's recording: the probe's tensor without its batch dim.
            query: (row, col) of the query pixel in the block's input map.
            map_size: The block's input map (H, W).

        Returns:
            (heads, h, w): the query's weights over the block's key map.

        Raises:
            NotImplementedError: For blocks without per-pixel maps (token mixers, channel attention).
        """
        raise NotImplementedError(f"{type(self).__name__} records no per-pixel attention map")

    @classmethod
    def draws_query_maps(cls) -> bool:
        """Whether the block implements :meth:`query_attention`."""
        return cls.query_attention is not Block.query_attention

    def check_input(self, x: torch.Tensor) -> None:
        """Raises ``ValueError`` naming the expected layout when ``x`` does not fit this block."""
        ndim, channel_axis = (3, -1) if self.layout == "tokens" else (4, 1)
        if x.ndim != ndim or x.shape[channel_axis] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects {self.layout} {LAYOUT_SHAPES[self.layout]} with C={self.dim}, "
                f"got shape {tuple(x.shape)}"
            )


def check_divisible(owner: str, dim: int, num_heads: int) -> int:
    """Returns ``dim // num_heads``; raises if ``num_heads`` is not a positive divisor of ``dim``."""
    if num_heads < 1 or dim % num_heads != 0:
        divisors = [heads for heads in range(1, min(dim, 64) + 1) if dim % heads == 0]
        raise ValueError(f"{owner}: dim={dim} is not divisible by num_heads={num_heads}; valid num_heads: {divisors}")
    return dim // num_heads


def heads_width(owner: str, dim: int, num_heads: int, head_dim: int | None) -> int:
    """The per-head width: ``head_dim`` when given, else ``dim // num_heads``.

    Given, the heads span ``num_heads · head_dim`` channels, as vit-pytorch's ``dim_head``.
    """
    if head_dim is None:
        return check_divisible(owner, dim, num_heads)
    if num_heads < 1 or head_dim < 1:
        raise ValueError(f"{owner}: num_heads and head_dim must be positive, got {num_heads} and {head_dim}")
    return head_dim


def check_choice(owner: str, option: str, value: object, choices: Iterable[object]) -> None:
    """Raises ``ValueError`` listing ``choices`` when ``value`` is not one of them."""
    valid = list(choices)
    if value not in valid:
        raise ValueError(f"{owner}: {option}={value!r} is not valid; choose one of {valid}")


def check_odd(owner: str, option: str, value: int) -> None:
    """Raises ``ValueError`` unless ``value`` is a positive odd integer (a kernel with a centre)."""
    if value < 1 or value % 2 == 0:
        raise ValueError(f"{owner}: {option} must be a positive odd integer (e.g. 3, 5, 7), got {value}")


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, heads * head_dim) → (B, heads, N, head_dim)."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)  # (B, heads, N, head_dim)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) → (B, N, heads * head_dim)."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (B, N, C)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    probe: AttentionProbe,
    *,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v, fused unless ``probe`` is recording.

    Args:
        query: (..., L, E).
        key: (..., S, E).
        value: (..., S, Ev).
        probe: Receives the probabilities (..., L, S) on the materialised path when recording.
        mask: Boolean (True = attend) or additive float mask broadcastable to (..., L, S).
        dropout: Attention dropout probability (apply only in training).
        scale: Logit scale; default 1/sqrt(E).

    Returns:
        (..., L, Ev).
    """
    if not probe.enabled:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * scale  # (..., L, S)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    probabilities = logits.softmax(dim=-1)
    probe(probabilities)
    return F.dropout(probabilities, p=dropout) @ value  # (..., L, Ev)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) → (B * windows, window_size², C); H and W must be multiples of ``window_size``."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)  # (B*nW, ws², C)


def window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * windows, window_size², C) → (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)  # (B, H, W, C)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into a (2·ws−1)² relative-bias table for every (query, key) pair of a window: (ws², ws²)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, ws²)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (ws², ws², 2)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


class ResidualGate(nn.Module):
    """``x + gate ⊙ block(x)`` with a per-channel gate initialised to zero: an exact identity at step 0.

    Grafting a block through this gate leaves a pretrained model's output unchanged until training moves the
    gate. The block must keep the input's shape. ``channel_axis`` counts from the end (-1 for tokens, -3 for
    maps), so the gate's broadcast shape is fixed at construction and torch.fx can trace the forward.

    Shape:
        - Input: the block's layout, (B, N, C) or (B, C, H, W).
        - Output: same as input.
    """

    def __init__(self, block: nn.Module, dim: int, channel_axis: int, init: float = 0.0) -> None:
        super().__init__()
        if channel_axis >= 0:
            raise ValueError(f"ResidualGate: channel_axis counts from the end (-1, -3, ...), got {channel_axis}")
        self.block = block
        self.gate_shape = (-1,) + (1,) * (-1 - channel_axis)  # (C,) for tokens, (C, 1, 1) for maps
        self.gate = nn.Parameter(torch.full((dim,), float(init)))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate.view(self.gate_shape) * self.block(x)

    @classmethod
    def around(cls, block: Block, init: float = 0.0) -> ResidualGate:
        """Wraps an attngraft block, reading its channel dim and layout."""
        return cls(block, block.dim, channel_axis=-1 if block.layout == "tokens" else -3, init=init)
