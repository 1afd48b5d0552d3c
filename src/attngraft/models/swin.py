"""A hierarchical shifted-window transformer (Swin, Liu et al. 2021) built on the ``window`` block."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath, Mlp
from timm.models.swin_transformer import PatchMerging
from torch import nn
from typing_extensions import override

from attngraft.blocks import create_block
from attngraft.models.factory import register_model
from attngraft.models.layers import init_linear_layers


class SwinLayer(nn.Module):
    """``x + DropPath(WindowAttention(LN(x)))`` then ``x + DropPath(MLP(LN(x)))`` on a (B, H, W, C) map."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = create_block(
            "window", dim, num_heads=num_heads, window_size=window_size, shift_size=shift_size
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.attention(self.norm1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinTransformer(nn.Module):
    """Patch embedding, stages of Swin layers (alternating shift 0 and window/2) joined by patch merging.

    Args:
        num_classes: Classifier outputs.
        in_chans: Input channels.
        img_size: Input side.
        patch_size: Patch side of the embedding.
        embed_dim: Channels of the first stage (doubled by each merge).
        depths: Layers per stage.
        num_heads: Heads per stage.
        window_size: Window side; a stage whose map is smaller uses the whole map as one window, unshifted.
        mlp_ratio: MLP width as a multiple of the channels.
        drop_path_rate: Stochastic depth, increasing linearly over all layers.

    Shape:
        - Input: (B, in_chans, img_size, img_size).
        - Output: (B, num_classes).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window_size: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have one entry per stage")
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)
        rates = iter(torch.linspace(0, drop_path_rate, sum(depths)).tolist())
        stages: list[nn.Module] = []
        side, dim = img_size // patch_size, embed_dim
        for index, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            if index > 0:
                stages.append(PatchMerging(dim))
                side, dim = -(-side // 2), dim * 2
            window = min(window_size, side)
            stages += [
                SwinLayer(
                    dim, heads, window, (window // 2) if layer % 2 and side > window else 0, mlp_ratio, next(rates)
                )
                for layer in range(depth)
            ]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.num_features = dim
        self.head = nn.Linear(dim, num_classes)
        init_linear_layers(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → the last stage's normalised map (B, H', W', num_features)."""
        x = self.patch_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, H/p, W/p, C)
        return self.norm(self.stages(x))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean((1, 2)))


# Named configurations: the Swin paper's Swin-T at 224×224, and ours for 28×28 inputs.
SWIN_SIZES: dict[str, dict[str, Any]] = {
    "micro": {"patch_size": 2, "embed_dim": 32, "depths": (2, 2, 2), "num_heads": (2, 4, 8), "window_size": 7},
    "tiny": {"patch_size": 4, "embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
}


@register_model("swin", family="swin", num_classes=10, in_chans=1, image_size=28)
def swin(*, size: str = "micro", img_size: int = 28, **options: Any) -> SwinTransformer:
    """Swin transformer; ``size``: micro (28×28: 14 → 7 → 4 maps) or tiny (Swin-T, 224×224)."""
    if size not in SWIN_SIZES:
        raise ValueError(f"unknown Swin size {size!r}; valid: {list(SWIN_SIZES)}")
    return SwinTransformer(img_size=img_size, **{**SWIN_SIZES[size], **options})
