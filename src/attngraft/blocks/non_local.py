"""Non-local block (Wang et al. 2018): every position attends to every position of a feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, attend, check_choice
from attngraft.blocks.cost import GRADIENTS, CostConfig, CostEntry, LayerCost
from attngraft.blocks.factory import register_block
from attngraft.blocks.recording import AttentionProbe


def non_local_cost(side: int, config: CostConfig) -> LayerCost:
    """Embedded Gaussian over every pixel: θ, φ, g and output projections, QKᵀ and PV (fused SDPA).

    Kept: q, k, v, the output, a log-sum-exp and the batch norm's input.
    """
    pixels, dim = side * side, config.dim
    inner = max(dim // 2, 1)  # θ, φ, g width
    return LayerCost(
        pixels**2, 4 * pixels * dim**2 + 2 * pixels**2 * dim, 2 * pixels * dim + 5 * pixels * inner + pixels + 2 * dim
    )


@register_block("non_local")
class NonLocalBlock(Block):
    """``z = x + BN(W_z y)``, ``y_i = Σ_j f(x_i, x_j) g(x_j) / C(x)``.

    Modes: "embedded_gaussian" (``f = exp(θ(x_i)ᵀ φ(x_j))``, normalised by softmax — no 1/√d scale, as in the
    paper) and "dot_product" (``f = θ(x_i)ᵀ φ(x_j)``, normalised by the number of key positions). With
    ``subsample`` the keys and values are 2×2 max-pooled. With ``zero_init`` (default) the BN scale starts at
    zero, so the block starts as an exact identity.

    Args:
        dim: Channels C.
        inner_dim: Channels of θ, φ, g; default C // 2.
        mode: "embedded_gaussian" or "dot_product".
        subsample: 2×2 max-pool φ and g (4× fewer keys).
        zero_init: Zero-initialise the BN scale (identity at init).

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    layout = "map"
    family = "non-local"
    cost_entry = CostEntry(
        title=lambda config: "non-local",
        cost=non_local_cost,
        options=lambda config: {},
        backward=f"{GRADIENTS}; the matrix is recomputed block by block",
        fused=True,
    )

    def __init__(
        self,
        dim: int,
        *,
        inner_dim: int | None = None,
        mode: str = "embedded_gaussian",
        subsample: bool = False,
        zero_init: bool = True,
    ) -> None:
        super().__init__(dim)
        check_choice(type(self).__name__, "mode", mode, ("embedded_gaussian", "dot_product"))
        self.inner_dim = inner_dim or max(dim // 2, 1)
        self.mode = mode
        self.subsample = subsample
        self.theta = nn.Conv2d(dim, self.inner_dim, kernel_size=1)
        self.phi = nn.Conv2d(dim, self.inner_dim, kernel_size=1)
        self.g = nn.Conv2d(dim, self.inner_dim, kernel_size=1)
        self.probe = AttentionProbe()
        self.out = nn.Conv2d(self.inner_dim, dim, kernel_size=1)
        self.norm = nn.BatchNorm2d(dim)
        if zero_init:
            nn.init.zeros_(self.norm.weight)

    def _keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.phi(x), self.g(x)
        if self.subsample:
            key, value = F.max_pool2d(key, 2), F.max_pool2d(value, 2)
        # contiguous: SDPA's fused CPU kernel needs the channel dim innermost (else it takes its slow math path)
        return key.flatten(2).transpose(1, 2).contiguous(), value.flatten(2).transpose(
            1, 2
        ).contiguous()  # (B, S, inner)

    @override
    def query_attention(
        self, probabilities: torch.Tensor, query: tuple[int, int], map_size: tuple[int, int]
    ) -> torch.Tensor:
        """One pixel's row of the ([1,] HW, S) recorded affinities, as a (1, h, w) map over the key grid."""
        height, width = map_size
        if probabilities.ndim == 3:  # embedded Gaussian: (1, HW, S)
            probabilities = probabilities[0]
        row = probabilities[query[0] * width + query[1]]  # (S,)
        keys = (height // 2, width // 2) if self.subsample else (height, width)
        return row.reshape(1, *keys)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, _, height, width = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2).contiguous()  # (B, HW, inner)
        key, value = self._keys_values(x)  # (B, S, inner)
        if self.mode == "embedded_gaussian":
            y = attend(query[:, None], key[:, None], value[:, None], self.probe, scale=1.0)[:, 0]  # (B, HW, inner)
        else:
            affinity = self.probe((query @ key.transpose(1, 2)) / key.shape[1])  # (B, HW, S)
            y = affinity @ value  # (B, HW, inner)
        # contiguous: a channels-last view here made the convolution and batch norm after it ~3× slower on CPU
        y = y.transpose(1, 2).reshape(batch, self.inner_dim, height, width).contiguous()  # (B, inner, H, W)
        return x + self.norm(self.out(y))
