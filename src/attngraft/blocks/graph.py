"""GAT-style graph attention (Veličković et al. 2018) over tokens, with an optional grid neighbourhood."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block, check_choice, check_divisible, merge_heads, split_heads
from attngraft.blocks.cost import GRADIENTS, CostConfig, CostEntry, LayerCost
from attngraft.blocks.factory import register_block
from attngraft.blocks.recording import AttentionProbe

ACTIVATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "leaky_relu": lambda x, slope: F.leaky_relu(x, slope),
    "relu": lambda x, slope: F.relu(x),
    "elu": lambda x, slope: F.elu(x),
    "gelu": lambda x, slope: F.gelu(x),
    "tanh": lambda x, slope: torch.tanh(x),
}


def grid_neighbourhood_mask(
    grid_size: tuple[int, int], radius: float, num_prefix_tokens: int, device: torch.device | None = None
) -> torch.Tensor:
    """Which tokens each token may attend to: patches within Euclidean ``radius`` on the grid.

    Prefix tokens (the class token) are connected to every token in both directions, so the class token sees the
    whole image and every patch can read it.

    Returns:
        Boolean (N, N) with N = num_prefix_tokens + rows * cols; True = edge.
    """
    rows, cols = grid_size
    coords = torch.stack(
        torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"), dim=-1
    ).view(-1, 2)  # (rows*cols, 2)
    distance = torch.cdist(coords.float(), coords.float())  # (P, P)
    tokens = num_prefix_tokens + rows * cols
    mask = torch.ones(tokens, tokens, dtype=torch.bool, device=device)
    mask[num_prefix_tokens:, num_prefix_tokens:] = distance <= radius
    return mask


def graph_cost(side: int, config: CostConfig) -> LayerCost:
    """Graph attention over every pixel: projections, pairwise scores and aggregation; scores and probabilities kept."""
    pixels, dim, heads = side * side, config.dim, config.heads
    return LayerCost(
        heads * pixels**2,
        4 * pixels * dim**2 + 4 * pixels * dim + 2 * pixels**2 * dim,
        3 * pixels * dim + 2 * heads * pixels**2,
    )


@register_block("graph")
class GraphAttention(Block):
    """Graph attention over tokens: every token is a node, edges are all pairs (or a grid neighbourhood).

    Per head h: ``z = W_h x``; scores ``e_ij = act(a_q · z_i + a_k · z_j)``; ``A = softmax_j(e_ij)`` over the
    neighbours of i; output ``Σ_j A_ij z_j``; heads are concatenated and projected. The additive score (unlike
    the dot product of ``mhsa``) is the defining difference of GAT.

    Args:
        dim: Token channels C.
        num_heads: Attention heads; must divide ``dim``.
        activation: Score nonlinearity, one of ``ACTIVATIONS`` (default LeakyReLU as in GAT).
        negative_slope: Slope of the LeakyReLU.
        radius: If given, patch tokens only attend to patches within this Euclidean distance on the grid.
        num_prefix_tokens: Leading non-patch tokens (class token), connected to all tokens.
        grid_size: (rows, cols) of the patch grid; default: inferred as a square from the token count.
        attn_drop: Dropout on the attention coefficients (training only).
        proj_drop: Dropout after the output projection.

    Shape:
        - Input: (B, N, C).
        - Output: (B, N, C).
    """

    layout = "tokens"
    family = "graph"
    cost_entry = CostEntry(
        title=lambda config: "graph attention over every pixel",
        cost=graph_cost,
        options=lambda config: {"num_heads": config.heads},
        backward=f"{GRADIENTS}; the gradients of its kept scores and probabilities",
    )

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        radius: float | None = None,
        num_prefix_tokens: int = 1,
        grid_size: tuple[int, int] | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim)
        owner = type(self).__name__
        self.num_heads = num_heads
        self.head_dim = check_divisible(owner, dim, num_heads)
        check_choice(owner, "activation", activation, ACTIVATIONS)
        if radius is not None and radius < 0:
            raise ValueError(f"{owner}: radius must be >= 0, got {radius}")
        self.activation = activation
        self.negative_slope = negative_slope
        self.radius = radius
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size
        self.project = nn.Linear(dim, dim, bias=False)
        self.attn_query = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.attn_key = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.attn_drop = nn.Dropout(attn_drop)
        self.probe = AttentionProbe()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform attention vectors, as in GAT."""
        bound = math.sqrt(6.0 / (self.head_dim + 1))
        nn.init.uniform_(self.attn_query, -bound, bound)
        nn.init.uniform_(self.attn_key, -bound, bound)

    def neighbourhood(self, tokens: int, device: torch.device) -> torch.Tensor | None:
        """The (N, N) edge mask for ``tokens`` tokens, or None when every pair is connected."""
        if self.radius is None:
            return None
        patches = tokens - self.num_prefix_tokens
        grid = self.grid_size
        if grid is None:
            side = math.isqrt(max(patches, 0))
            if side * side != patches:
                raise ValueError(
                    f"GraphAttention: cannot infer a square grid from {patches} patch tokens "
                    f"({tokens} tokens - {self.num_prefix_tokens} prefix); pass grid_size=(rows, cols)"
                )
            grid = (side, side)
        if grid[0] * grid[1] != patches:
            raise ValueError(f"GraphAttention: grid_size {grid} does not match {patches} patch tokens")
        return grid_neighbourhood_mask(grid, self.radius, self.num_prefix_tokens, device)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        nodes = split_heads(self.project(x), self.num_heads)  # (B, heads, N, head_dim)
        score_query = torch.einsum("bhnd,hd->bhn", nodes, self.attn_query)  # (B, heads, N)
        score_key = torch.einsum("bhnd,hd->bhn", nodes, self.attn_key)  # (B, heads, N)
        scores = ACTIVATIONS[self.activation](score_query[..., :, None] + score_key[..., None, :], self.negative_slope)
        mask = self.neighbourhood(x.shape[1], x.device)  # (N, N) or None
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))  # (B, heads, N, N)
        coefficients = self.attn_drop(self.probe(scores.softmax(dim=-1)))  # (B, heads, N, N)
        return self.proj_drop(self.proj(merge_heads(coefficients @ nodes)))

    @override
    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, activation={self.activation}, radius={self.radius}"
