"""Local relation layer (Hu et al. 2019, Local Relational Networks).

Each pixel aggregates its k×k neighbourhood with weights from the appearance of the neighbours and their offset.
The appearance term ``−(q − k)²`` expands to ``−q² + 2qk − k²``; ``−q²`` is the same for the whole window, so the
softmax ignores it, and the rest is a 2-dim dot product ``[q, 1] · [2k, −k²]``. With the geometric prior as a
per-offset logit term, the layer runs on the same k×k attention kernels as ``local``
(:mod:`attngraft.blocks.kernels`), each channel group a head.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import check_odd
from attngraft.blocks.cost import GRADIENTS, CostConfig, CostEntry, LayerCost
from attngraft.blocks.factory import register_block
from attngraft.blocks.local import WindowBlock, window_attention
from attngraft.blocks.recording import AttentionProbe


def relative_offsets(kernel_size: int) -> torch.Tensor:
    """(row, col) offset of each neighbourhood position from the centre: (2, k, k)."""
    radius = kernel_size // 2
    axis = torch.arange(kernel_size, dtype=torch.float32) - radius
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"))


GEOMETRY_HIDDEN = 32  # the geometry network's default width, the one costed


def relation_cost(side: int, config: CostConfig) -> LayerCost:
    """The relation layer with ``groups = config.heads``: projections, appearance and geometry logits, aggregation.

    The fused kernel keeps its 2-dim appearance queries and keys, the output and a log-sum-exp.
    """
    pixels, dim, groups, taps = side * side, config.dim, config.heads, config.kernel**2
    geometry = 2 * taps * GEOMETRY_HIDDEN * (2 + groups)
    return LayerCost(
        groups * pixels * taps,
        4 * pixels * dim * groups + 2 * pixels * taps * (2 * groups + dim) + 2 * groups * pixels + geometry,
        2 * pixels * dim + 6 * groups * pixels + (GEOMETRY_HIDDEN + groups) * taps,
    )


@register_block("local_relation")
class LocalRelation(WindowBlock):
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

    cost_entry = CostEntry(
        title=lambda config: f"local relation {config.kernel}×{config.kernel}",
        cost=relation_cost,
        options=lambda config: {
            "groups": config.heads,
            "kernel_size": config.kernel,
            "geometry_hidden": GEOMETRY_HIDDEN,
        },
        backward=f"{GRADIENTS}; the fused kernel recomputes its weights tile by tile in its own scratch",
    )

    def __init__(
        self, dim: int, *, kernel_size: int = 7, groups: int = 8, geometry_hidden: int = GEOMETRY_HIDDEN
    ) -> None:
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
        """k² per key, [q, 1] · [2k, −k²] per group and Σ ω·x per channel over each window (2 FLOPs a mult-add)."""
        batch, channels, height, width = input_shape
        return 2 * batch * height * width * (self.kernel_size**2 * (2 * self.groups + channels) + self.groups)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, channels, height, width = x.shape
        query, key = self.query(x), self.key(x)  # (B, G, H, W) each
        appearance_query = torch.stack([query, torch.ones_like(query)], dim=2)  # (B, G, 2, H, W)
        appearance_key = torch.stack([key + key, -key.square()], dim=2)  # [q, 1] · [2k, −k²] = 2qk − k²
        offsets: torch.Tensor = self.offsets  # type: ignore[assignment]
        geometry = self.geometry(offsets.to(x.dtype)).view(self.groups, self.kernel_size**2)  # (G, k²)
        values = x.view(batch, self.groups, channels // self.groups, height, width)  # (B, G, C / G, H, W)
        out = window_attention(
            (appearance_query, appearance_key, values), self.kernel_size, self.probe, offset_bias=geometry
        )
        return out.reshape(batch, channels, height, width)
