"""Local relation layer (Hu et al. 2019, Local Relational Networks) and the SASA attention stem.

Both aggregate each pixel's k×k neighbourhood with weights computed from the neighbours. The stem's logits and
aggregation are those of ``local`` (shifted windows); the relation layer materialises the neighbourhood with
``F.unfold`` (its keys are grouped scalars).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, check_odd
from attngraft.blocks.factory import register_block
from attngraft.blocks.local import (
    aggregate,
    border_bias,
    check_local_heads,
    logits,
    record_windows,
    relative_embeddings,
)
from attngraft.blocks.recording import AttentionProbe


def neighbourhoods(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Every pixel's k×k neighbourhood, zero outside the image: (B, C, H, W) → (B, C, k², H, W)."""
    batch, channels, height, width = x.shape
    unfolded = F.unfold(x, kernel_size, padding=kernel_size // 2)  # (B, C·k², H·W)
    return unfolded.view(batch, channels, kernel_size * kernel_size, height, width)


def relative_offsets(kernel_size: int) -> torch.Tensor:
    """(row, col) offset of each neighbourhood position from the centre: (2, k, k)."""
    radius = kernel_size // 2
    axis = torch.arange(kernel_size, dtype=torch.float32) - radius
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"))


@register_block("local_relation")
class LocalRelation(Block):
    """Local relation layer: ``y_p = Σ_{p' ∈ N_k(p)} ω(p, p') x_p'`` with channels shared within groups.

    ``ω = softmax_{p'}(Φ(q_p, k_p') + g(p' − p))`` where q, k are scalar query/key embeddings per channel group
    (1×1 convolutions), the appearance composability is ``Φ(q, k) = −(q − k)²``, and the geometric prior ``g``
    is a small network (two 1×1 convolutions with a ReLU) on the relative offset. Neighbours outside the image
    are excluded, as in ``local``.

    Args:
        dim: Channels C (input and output).
        kernel_size: Odd neighbourhood side k.
        groups: Channel groups sharing one aggregation weight; must divide ``dim``.
        geometry_hidden: Hidden width of the geometric prior network.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    layout = "map"
    family = "local"

    def __init__(self, dim: int, *, kernel_size: int = 7, groups: int = 8, geometry_hidden: int = 32) -> None:
        super().__init__(dim)
        owner = type(self).__name__
        check_odd(owner, "kernel_size", kernel_size)
        if groups < 1 or dim % groups:
            raise ValueError(f"{owner}: groups={groups} must divide dim={dim}")
        self.kernel_size = kernel_size
        self.groups = groups
        self.query = nn.Conv2d(dim, groups, kernel_size=1)
        self.key = nn.Conv2d(dim, groups, kernel_size=1)
        self.geometry = nn.Sequential(
            nn.Conv2d(2, geometry_hidden, kernel_size=1), nn.ReLU(), nn.Conv2d(geometry_hidden, groups, kernel_size=1)
        )
        self.register_buffer("offsets", relative_offsets(kernel_size)[None], persistent=False)  # (1, 2, k, k)
        self.probe = AttentionProbe()

    @override
    def attention_flops(self, input_shape: torch.Size) -> int:
        """(q − k)² per group and Σ ω·x per channel over each k×k neighbourhood, 2 FLOPs per multiply-add."""
        batch, channels, height, width = input_shape
        return 2 * batch * height * width * self.kernel_size**2 * (self.groups + channels)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, channels, height, width = x.shape
        taps = self.kernel_size**2
        query = self.query(x)[:, :, None]  # (B, G, 1, H, W)
        key = neighbourhoods(self.key(x), self.kernel_size)  # (B, G, k², H, W)
        offsets: torch.Tensor = self.offsets  # type: ignore[assignment]
        geometry = self.geometry(offsets.to(x.dtype)).view(1, self.groups, taps, 1, 1)  # (1, G, k², 1, 1)
        scores = -((query - key) ** 2) + geometry + border_bias(height, width, self.kernel_size, x)  # (B, G, k², H, W)
        weights = scores.softmax(dim=2)  # (B, G, k², H, W)
        if self.probe.enabled:
            record_windows(self.probe, weights, self.kernel_size)
        values = neighbourhoods(x, self.kernel_size).view(
            batch, self.groups, channels // self.groups, taps, height, width
        )
        return (weights[:, :, None] * values).sum(dim=3).reshape(batch, channels, height, width)


@register_block("local_stem")
class LocalStem(Block):
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

    layout = "map"
    family = "local"

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
        """q·k and Σ p·v over each k×k window, 2 FLOPs per multiply-add.

        The relative logits q·r and the value mixing are einsums, which the counter sees itself.
        """
        batch, _, height, width = input_shape
        return 2 * 2 * batch * height * width * self.out_dim * self.kernel_size**2

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
        heads, head_dim, k = self.num_heads, self.head_dim, self.kernel_size
        per_mixture = self.values(x).view(batch, self.mixtures, self.out_dim, height, width)
        value = torch.einsum("bmchw,mhw->bchw", per_mixture, self.mixture_weights(height, width))  # (B, out, H, W)
        query = self.query(x).view(batch, heads, head_dim, height, width)
        key = self.key(x).view(batch, heads, head_dim, height, width)
        bias = border_bias(height, width, k, x)
        weights = logits(query, key, self.rel_rows, self.rel_cols, bias).softmax(dim=2)  # (B, heads, k², H, W)
        if self.probe.enabled:
            record_windows(self.probe, weights, k)
        out = aggregate(weights, value.view(batch, heads, head_dim, height, width), k)  # (B, heads, hd, H, W)
        return out.reshape(batch, self.out_dim, height, width)
