"""SASA local self-attention and the SASA attention stem (Ramachandran et al. 2019).

Each pixel attends to its k×k neighbourhood.

Per head, for the pixel at (i, j) with query ``q_ij``::

    y_ij = Σ_{(a, b) ∈ N_k(i, j)} softmax_ab(q_ij · k_ab + q_ij · r_{a-i, b-j}) v_ab

where ``r_{a-i, b-j}`` concatenates a row-offset embedding and a column-offset embedding, each half of the head
dim (the paper's 2-D relative embedding, added to the key logits). There is no 1/√d scale, as in the paper.

Border rule: neighbours outside the image are excluded — the softmax runs over the part of the k×k window that
lies inside the image (no zero-padded keys diluting the attention).

The relative term splits into a row part ``q_ij[:d/2] · r_row[a − i]`` and a column part ``q_ij[d/2:] · r_col[b − j]``:
the row and column embeddings of :mod:`attngraft.blocks.kernels`, where the k×k attention runs (a fused compiled
kernel on CPU, chosen by device).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, check_divisible, check_odd
from attngraft.blocks.cost import GRADIENTS, CostConfig, CostEntry, LayerCost
from attngraft.blocks.factory import register_block
from attngraft.blocks.kernels import (
    check_backend,
    neighbourhood_attention,
    neighbourhood_attention_reference,
    packed_neighbourhood_attention,
)
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


def record_windows(probe: AttentionProbe, weights: torch.Tensor, kernel_size: int) -> None:
    """Hands per-pixel window weights (B, heads, k², H, W) to ``probe`` as (B, heads, H, W, k, k)."""
    batch, heads, _, height, width = weights.shape
    windows = weights.view(batch, heads, kernel_size, kernel_size, height, width)
    probe(windows.permute(0, 1, 4, 5, 2, 3))  # (B, heads, H, W, k, k)


def window_attention(
    qkv: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    kernel_size: int,
    probe: AttentionProbe,
    backend: str | None = None,
    *,
    row_embedding: torch.Tensor | None = None,
    col_embedding: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The k×k attention of :mod:`attngraft.blocks.kernels`, or the recording path while ``probe`` records.

    The recording path materialises the probabilities and hands them over as (B, heads, H, W, k, k).

    Args:
        qkv: Query, key and value, each (B, heads, D, H, W) (the value's D may differ), or packed as one
            (B, 3, heads, D, H, W) tensor from a single projection (no copies on the compiled kernel).
        kernel_size: Odd window side k.
        probe: The block's probe.
        backend: A backend of :mod:`attngraft.blocks.kernels`, or None to choose by device.
        row_embedding: (heads, k, Dr), see :func:`attngraft.blocks.kernels.neighbourhood_attention`.
        col_embedding: (heads, k, Dc), likewise.
        offset_bias: (heads, k²), likewise.

    Returns:
        (B, heads, Dv, H, W).
    """
    embeddings = {"row_embedding": row_embedding, "col_embedding": col_embedding, "offset_bias": offset_bias}
    if probe.enabled:
        query, key, value = qkv.unbind(1) if isinstance(qkv, torch.Tensor) else qkv
        out, probabilities = neighbourhood_attention_reference(query, key, value, kernel_size, **embeddings)
        record_windows(probe, probabilities, kernel_size)
        return out
    if isinstance(qkv, torch.Tensor):
        return packed_neighbourhood_attention(qkv, kernel_size, backend=backend, **embeddings)
    query, key, value = qkv
    return neighbourhood_attention(query, key, value, kernel_size, backend=backend, **embeddings)


class WindowBlock(Block):
    """A block whose attention runs over each pixel's k×k window (the ``local`` family).

    It records (B, heads, H, W, k, k) window weights and draws a query's window around it.
    """

    layout = "map"
    family = "local"

    @override
    def query_attention(
        self, probabilities: torch.Tensor, query: tuple[int, int], map_size: tuple[int, int]
    ) -> torch.Tensor:
        """The query's k×k window weights, (heads, H, W, k, k) recorded, placed around it on the (H, W) map."""
        weights = probabilities[:, query[0], query[1]]  # (heads, k, k)
        kernel = weights.shape[-1]
        radius = kernel // 2
        height, width = map_size
        canvas = weights.new_zeros(weights.shape[0], height + 2 * radius, width + 2 * radius)
        canvas[:, query[0] : query[0] + kernel, query[1] : query[1] + kernel] = weights
        return canvas[:, radius : radius + height, radius : radius + width]  # (heads, H, W)


def retired_compiled_option(owner: str, compiled: bool) -> None:
    """``compiled=True`` once ran the pure-PyTorch kernels through ``torch.compile``; the fused kernel replaced it."""
    if compiled:
        warnings.warn(
            f"{owner}: compiled=True is retired and ignored: the fused k×k kernel is used by default "
            "(faster than the compiled one was); choose a kernel with backend= instead",
            FutureWarning,
            stacklevel=3,
        )


def local_cost(side: int, config: CostConfig) -> LayerCost:
    """SASA k×k attention: qkv projections, q·k, p·v and the relative logits.

    The fused kernel keeps q, k, v, the output and a log-sum-exp.
    """
    pixels, dim, heads, kernel = side * side, config.dim, config.heads, config.kernel
    return LayerCost(
        heads * pixels * kernel**2,
        6 * pixels * dim**2 + 4 * pixels * dim * kernel**2 + 2 * pixels * dim * kernel,
        5 * pixels * dim + heads * pixels,
    )


@register_block("local")
class LocalSelfAttention(WindowBlock):
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
        backend: The k×k attention kernel (:data:`attngraft.blocks.kernels.BACKENDS`); None chooses by device.
        compiled: Retired (ignored, with a warning): the fused kernel replaced the ``torch.compile`` path.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, out_dim, H / stride, W / stride).
    """

    cost_entry = CostEntry(
        title=lambda config: f"SASA local {config.kernel}×{config.kernel}",
        cost=local_cost,
        options=lambda config: {"num_heads": config.heads, "kernel_size": config.kernel},
        backward=f"{GRADIENTS}; the fused kernel recomputes the probabilities tile by tile in its own scratch "
        "(not tensors, so not seen on CPU)",
    )

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        num_heads: int = 8,
        kernel_size: int = 7,
        stride: int = 1,
        qkv_bias: bool = False,
        backend: str | None = None,
        compiled: bool = False,
    ) -> None:
        super().__init__(dim)
        owner = type(self).__name__
        self.out_dim = out_dim or dim
        self.num_heads = num_heads
        self.head_dim = check_local_heads(owner, self.out_dim, num_heads, kernel_size)
        if stride not in (1, 2):
            raise ValueError(f"{owner}: stride must be 1 or 2, got {stride}")
        check_backend(backend)
        retired_compiled_option(owner, compiled)
        self.kernel_size = kernel_size
        self.stride = stride
        self.backend = backend
        self.qkv = nn.Conv2d(dim, 3 * self.out_dim, kernel_size=1, bias=qkv_bias)
        self.rel_rows, self.rel_cols = relative_embeddings(num_heads, kernel_size, self.head_dim)
        self.probe = AttentionProbe()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, _, height, width = x.shape
        qkv = self.qkv(x).view(batch, 3, self.num_heads, self.head_dim, height, width)
        out = window_attention(  # (B, heads, head_dim, H, W)
            qkv, self.kernel_size, self.probe, self.backend, row_embedding=self.rel_rows, col_embedding=self.rel_cols
        )
        out = out.reshape(batch, self.out_dim, height, width)  # (B, out_dim, H, W)
        # ceil_mode: odd sides give ceil(H / 2), as a stride-2 3×3 convolution with padding 1 does.
        return F.avg_pool2d(out, 2, ceil_mode=True) if self.stride == 2 else out

    @override
    def attention_flops(self, input_shape: torch.Size) -> int:
        """q·k and Σ p·v over each k×k window, 2 FLOPs per multiply-add.

        The relative logits q·r are two einsums over k row and k column offsets, which the counter sees itself.
        """
        batch, _, height, width = input_shape
        return 2 * 2 * batch * height * width * self.out_dim * self.kernel_size**2

    @override
    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )


@register_block("local_stem")
class LocalStem(WindowBlock):
    """SASA attention stem: k×k local attention whose values mix ``m`` value embeddings by spatial position.

    Logits are those of ``local`` (``q · k + q · r`` over the in-image k×k window). The value of neighbour
    (a, b) is ``(Σ_m p(a, b, m) W_V^m) x_ab`` with ``p(a, b, m) = softmax_m((e_row(a) + e_col(b)) · ν_m)``, where
    (a, b) is the neighbour's position within its ``pool_size``×``pool_size`` pooling window (the stem is
    followed by max-pooling of that size), as in the paper's spatially-aware value embeddings.

    Args:
        dim: Input channels (e.g. 3 for RGB).
        out_dim: Output channels (e.g. 64).
        num_heads: Attention heads; must divide ``out_dim`` with an even head dim.
        kernel_size: Odd neighbourhood side k.
        mixtures: Number m of value embeddings.
        pool_size: Side of the pooling window the position embeddings align to.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, out_dim, H, W).
    """

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        num_heads: int = 8,
        kernel_size: int = 5,
        mixtures: int = 4,
        pool_size: int = 4,
    ) -> None:
        super().__init__(dim)
        owner = type(self).__name__
        self.out_dim = out_dim or dim
        self.num_heads = num_heads
        self.head_dim = check_local_heads(owner, self.out_dim, num_heads, kernel_size)
        if mixtures < 1 or pool_size < 1:
            raise ValueError(f"{owner}: mixtures and pool_size must be positive, got {mixtures}, {pool_size}")
        self.kernel_size, self.mixtures, self.pool_size = kernel_size, mixtures, pool_size
        self.query = nn.Conv2d(dim, self.out_dim, kernel_size=1, bias=False)
        self.key = nn.Conv2d(dim, self.out_dim, kernel_size=1, bias=False)
        self.values = nn.Conv2d(dim, mixtures * self.out_dim, kernel_size=1, bias=False)  # W_V^1..m stacked
        self.rel_rows, self.rel_cols = relative_embeddings(num_heads, kernel_size, self.head_dim)
        self.position_rows = nn.Parameter(torch.randn(pool_size, self.out_dim) * 0.02)  # e_row
        self.position_cols = nn.Parameter(torch.randn(pool_size, self.out_dim) * 0.02)  # e_col
        self.mixture_embeddings = nn.Parameter(torch.randn(mixtures, self.out_dim) * 0.02)  # ν_m
        self.probe = AttentionProbe()

    @override
    def attention_flops(self, input_shape: torch.Size) -> int:
        """q·k and Σ p·v over each k×k window, and the per-pixel value mixing, 2 FLOPs per multiply-add.

        The relative logits q·r are einsums (on the plain path FLOP counting takes), which the counter sees itself.
        """
        batch, _, height, width = input_shape
        return 2 * batch * height * width * self.out_dim * (2 * self.kernel_size**2 + self.mixtures)

    def mixture_weights(self, height: int, width: int) -> torch.Tensor:
        """p(a, b, m) for every pixel of an H×W map: (m, H, W), summing to 1 over m."""
        rows = self.position_rows[torch.arange(height, device=self.position_rows.device) % self.pool_size]
        cols = self.position_cols[torch.arange(width, device=self.position_cols.device) % self.pool_size]
        embedding = rows[:, None, :] + cols[None, :, :]  # (H, W, out_dim)
        return torch.einsum("hwc,mc->mhw", embedding, self.mixture_embeddings).softmax(dim=0)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, _, height, width = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        weights = self.mixture_weights(height, width)  # (m, H, W)
        mixtures = self.values(x).view(batch, self.mixtures, self.out_dim, height, width).unbind(1)
        # Σ_m p(a, b, m) W_V^m x_ab, one (B, out, H, W) term per mixture (an einsum was ~10× slower on CPU)
        value = sum((mixture * weights[index] for index, mixture in enumerate(mixtures)), torch.zeros(()))
        query = self.query(x).view(batch, heads, head_dim, height, width)
        key = self.key(x).view(batch, heads, head_dim, height, width)
        value = value.view(batch, heads, head_dim, height, width)
        out = window_attention(  # (B, heads, head_dim, H, W)
            (query, key, value), self.kernel_size, self.probe, row_embedding=self.rel_rows, col_embedding=self.rel_cols
        )
        return out.reshape(batch, self.out_dim, height, width)
