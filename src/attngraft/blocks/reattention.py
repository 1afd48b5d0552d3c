"""DeepViT re-attention (Zhou et al. 2021): attention maps mixed across heads to keep deep layers diverse."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, check_choice, heads_width, merge_heads, split_heads
from attngraft.blocks.factory import register_block
from attngraft.blocks.recording import AttentionProbe


@register_block("reattention")
class ReAttention(Block):
    """``Re-Attention(Q, K, V) = Norm(Θᵀ softmax(Q Kᵀ / √d)) V`` with a learnable head-mixing matrix Θ.

    Θ starts as the identity, so the block starts as multi-head self-attention followed by the norm. The probe
    records the softmax maps (rows sum to 1), before mixing.

    Args:
        dim: Token channels C.
        num_heads: Attention heads; must divide ``dim``.
        qkv_bias: Bias in the query/key/value projection.
        head_dim: Width of each head; default ``dim // num_heads`` (see ``mhsa``).
        norm: Norm over the mixed maps: "batch" (BatchNorm over heads, as in the paper), "layer" (LayerNorm over
            heads, as in vit-pytorch) or "none".
        attn_drop: Dropout on the mixed maps (training only).
        proj_drop: Dropout after the output projection.

    Shape:
        - Input: (B, N, C).
        - Output: (B, N, C).
    """

    layout = "tokens"
    family = "self-attention"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = True,
        head_dim: int | None = None,
        norm: str = "batch",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim)
        check_choice(type(self).__name__, "norm", norm, ("batch", "layer", "none"))
        self.num_heads = num_heads
        self.head_dim = heads_width(type(self).__name__, dim, num_heads, head_dim)
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.probe = AttentionProbe()
        self.head_mixing = nn.Parameter(torch.eye(num_heads))  # Θ: (heads_in, heads_out)
        self.norm = norm
        self.mix_norm: nn.Module = nn.Identity()
        if norm == "batch":
            self.mix_norm = nn.BatchNorm2d(num_heads)
        elif norm == "layer":
            self.mix_norm = nn.LayerNorm(num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        query, key, value = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)  # (B, heads, N, hd)
        attention = ((query @ key.transpose(-2, -1)) * self.head_dim**-0.5).softmax(dim=-1)  # (B, heads, N, N)
        attention = self.probe(attention)
        # einsum returns head-last strides; BatchNorm2d over a few channels-last channels is ~10x slower on CPU.
        mixed = torch.einsum("bhij,hg->bgij", attention, self.head_mixing).contiguous()  # (B, heads, N, N)
        if self.norm == "layer":
            mixed = self.mix_norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # norm over heads
        else:
            mixed = self.mix_norm(mixed)
        out = self.attn_drop(mixed) @ value  # (B, heads, N, head_dim)
        return self.proj_drop(self.proj(merge_heads(out)))
