"""Pre-norm transformer encoder layer whose token mixer is any registered token block."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn
from typing_extensions import override

from attngraft.blocks._ops import Block
from attngraft.blocks.factory import BLOCKS, create_block, list_blocks


class EncoderLayer(Block):
    """``x + DropPath(LS(mixer(LN(x))))`` then ``x + DropPath(LS(MLP(LN(x))))``.

    Args:
        dim: Token channels C.
        mixer: Registered token block ("mhsa", "graph", "reattention", ...).
        mlp_ratio: Hidden width of the MLP as a multiple of ``dim`` (truncated to an integer).
        mlp_dim: Exact hidden width of the MLP; overrides ``mlp_ratio``.
        norm_eps: Epsilon of the two LayerNorms.
        drop: Dropout inside the MLP and after the mixer's projection.
        drop_path: Stochastic-depth probability of each residual branch.
        layer_scale: Initial LayerScale value (e.g. 1e-5, or 0.0 for an exact identity at init); None disables.
        **mixer_options: Keyword options of the mixer (``num_heads``, ``radius``, ...).

    Shape:
        - Input: (B, N, C).
        - Output: (B, N, C).
    """

    layout = "tokens"
    family = "encoder"

    def __init__(
        self,
        dim: int,
        *,
        mixer: str = "mhsa",
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        norm_eps: float = 1e-5,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        **mixer_options: Any,
    ) -> None:
        super().__init__(dim)
        if BLOCKS.get(mixer).layout != "tokens":
            raise ValueError(f"EncoderLayer: mixer {mixer!r} takes maps; token mixers: {list_blocks(layout='tokens')}")
        if mlp_dim is not None and mlp_dim < 1:
            raise ValueError(f"EncoderLayer: mlp_dim must be a positive integer, got {mlp_dim}")
        if "proj_drop" not in mixer_options and drop:
            mixer_options["proj_drop"] = drop
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = create_block(mixer, dim, **mixer_options)
        self.scale1: nn.Module = nn.Identity() if layer_scale is None else LayerScale(dim, init_values=layer_scale)
        self.drop_path1: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=mlp_dim if mlp_dim is not None else int(dim * mlp_ratio), drop=drop)
        self.scale2: nn.Module = nn.Identity() if layer_scale is None else LayerScale(dim, init_values=layer_scale)
        self.drop_path2: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x + self.drop_path1(self.scale1(self.mixer(self.norm1(x))))
        return x + self.drop_path2(self.scale2(self.mlp(self.norm2(x))))
