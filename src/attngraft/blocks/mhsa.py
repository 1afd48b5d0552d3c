"""Classic multi-head self-attention (Vaswani et al. 2017) over tokens."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, attend, heads_width, merge_heads, split_heads
from attngraft.blocks.cost import GRADIENTS, CostEntry, transformer_cost
from attngraft.blocks.factory import register_block
from attngraft.blocks.recording import AttentionProbe


@register_block("mhsa")
class MultiHeadSelfAttention(Block):
    """Scaled dot-product multi-head self-attention.

    Uses ``F.scaled_dot_product_attention`` (fused kernels) unless its probe is recording, in which case the
    attention probabilities are materialised and handed to the probe.

    Args:
        dim: Token channels C.
        num_heads: Attention heads; must divide ``dim``.
        qkv_bias: Bias in the query/key/value projection.
        head_dim: Width of each head; default ``dim // num_heads``. Given, the heads span ``num_heads · head_dim``
            channels, projected back to ``dim`` (vit-pytorch's ``dim_head``).
        attn_drop: Dropout on the attention probabilities (training only).
        proj_drop: Dropout after the output projection.

    Shape:
        - Input: (B, N, C).
        - Output: (B, N, C).
    """

    layout = "tokens"
    family = "self-attention"
    cost_entry = CostEntry(
        title=lambda config: "pixel transformer: MHSA over every pixel",
        cost=lambda side, config: transformer_cost(side * side, config),
        options=lambda config: {"num_heads": config.heads},
        backward=f"{GRADIENTS}; the matrix is recomputed block by block",
        fused=True,
    )

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = True,
        head_dim: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim)
        self.num_heads = num_heads
        self.head_dim = heads_width(type(self).__name__, dim, num_heads, head_dim)
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.probe = AttentionProbe()
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        query, key, value = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)  # (B, heads, N, hd) each
        dropout = self.attn_drop if self.training else 0.0
        out = attend(query, key, value, self.probe, dropout=dropout)  # (B, heads, N, head_dim)
        return self.proj_drop(self.proj(merge_heads(out)))
