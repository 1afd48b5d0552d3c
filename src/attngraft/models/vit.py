"""Vision transformers built from :class:`~attngraft.blocks.EncoderLayer`: ViT, DeepViT, DeiT, pixel and hybrid.

All share one class: a Conv2d patch embedding (kernel = stride = patch), a class token (and, for DeiT, a
distillation token), learned positions, pre-norm encoder layers whose token mixer is any registered token block
(``mhsa`` for ViT, ``reattention`` for DeepViT), a final LayerNorm and a linear head on the class token.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from typing_extensions import override

from attngraft.blocks import EncoderLayer
from attngraft.models.cnn import mnist_features
from attngraft.models.factory import register_model
from attngraft.models.layers import init_linear_layers

# Named sizes: (embed_dim, depth, num_heads). "micro" is ours for 28×28 inputs; tiny/small from DeiT;
# base/large/huge from the ViT paper (Table 1).
SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (64, 6, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def size_options(size: str) -> dict[str, int]:
    """``embed_dim``, ``depth`` and ``num_heads`` of a named size; the error lists the valid names."""
    if size not in SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid: {list(SIZES)}")
    embed_dim, depth, num_heads = SIZES[size]
    return {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}


class VisionTransformer(nn.Module):
    """ViT over the patches of an image, or of a feature map from an optional convolutional ``stem``.

    Args:
        num_classes: Classifier outputs.
        in_chans: Input channels.
        img_size: Side of the (square) map the patch embedding cuts: the input's, or the stem's output's.
        patch_size: Patch side; must divide the side of the map the patch embedding sees.
        embed_dim: Token width.
        depth: Encoder layers.
        num_heads: Attention heads.
        mlp_ratio: MLP width as a multiple of ``embed_dim``.
        mixer: Registered token mixer of every layer ("mhsa", "reattention", "graph").
        distilled: Add a distillation token and head (DeiT).
        stem: Optional module run before the patch embedding (hybrid models).
        stem_channels: Channels of the stem's output map.
        drop_rate: Dropout after the position embedding and inside the layers.
        drop_path_rate: Stochastic depth, increasing linearly to this value over the layers.
        **mixer_options: Extra options of the mixer.

    Shape:
        - Input: (B, in_chans, img_size, img_size).
        - Output: (B, num_classes); DeiT in training mode with ``distilled_training`` set returns
          (class-head, distillation-head) logits, otherwise their mean.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mixer: str = "mhsa",
        distilled: bool = False,
        stem: nn.Module | None = None,
        stem_channels: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **mixer_options: Any,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide img_size {img_size} (the side the patches cut)")
        self.stem = stem or nn.Identity()
        self.patch_embed = nn.Conv2d(stem_channels or in_chans, embed_dim, patch_size, stride=patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = 2 if distilled else 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.Sequential(
            *(
                EncoderLayer(
                    embed_dim,
                    mixer=mixer,
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    drop_path=rate,
                    num_heads=num_heads,
                    **mixer_options,
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = embed_dim
        self.head = nn.Linear(embed_dim, num_classes)
        self.head_dist = nn.Linear(embed_dim, num_classes) if distilled else None
        self.distilled_training = False
        self._init_weights()

    def _init_weights(self) -> None:
        for parameter in (self.pos_embed, self.cls_token, self.dist_token):
            if parameter is not None:
                trunc_normal_(parameter, std=0.02)
        init_linear_layers(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → normalised tokens (B, prefix + patches, embed_dim).

        Inputs of another size than ``img_size`` get the position embedding resampled (bicubic) to their grid.
        """
        patches = self.patch_embed(self.stem(x))  # (B, D, grid_h, grid_w)
        position = self.position_embedding(patches.shape[-2], patches.shape[-1])
        patches = patches.flatten(2).transpose(1, 2)  # (B, patches, D)
        prefix = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        tokens = torch.cat([token.expand(x.shape[0], -1, -1) for token in prefix] + [patches], dim=1)
        return self.norm(self.layers(self.pos_drop(tokens + position)))

    def position_embedding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """The learned positions (1, prefix + patches, D), resampled when the patch grid differs from training's."""
        if (grid_height, grid_width) == self.grid_size:
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed,
            new_size=[grid_height, grid_width],
            old_size=list(self.grid_size),
            num_prefix_tokens=self.num_prefix_tokens,
        )

    @override
    def forward(self, x: torch.Tensor) -> Any:
        tokens = self.forward_features(x)
        logits = self.head(tokens[:, 0])
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(tokens[:, 1])
        if self.distilled_training and self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2


def _vit(size: str, img_size: int, patch_size: int, **options: Any) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, patch_size=patch_size, **{**size_options(size), **options})


@register_model("vit", family="vit", num_classes=10, in_chans=1, image_size=28)
def vit(*, size: str = "micro", img_size: int = 28, patch_size: int = 7, **options: Any) -> VisionTransformer:
    """ViT (Dosovitskiy et al. 2021); ``size``: micro (28×28 default), tiny, small, base, large, huge."""
    return _vit(size, img_size, patch_size, **options)


@register_model("deepvit", family="vit", num_classes=10, in_chans=1, image_size=28)
def deepvit(*, size: str = "micro", img_size: int = 28, patch_size: int = 7, **options: Any) -> VisionTransformer:
    """DeepViT (Zhou et al. 2021): ViT whose layers use re-attention."""
    return _vit(size, img_size, patch_size, mixer="reattention", **options)


@register_model("deit", family="vit", num_classes=10, in_chans=1, image_size=28)
def deit(*, size: str = "micro", img_size: int = 28, patch_size: int = 7, **options: Any) -> VisionTransformer:
    """DeiT (Touvron et al. 2021): ViT with a distillation token and head."""
    return _vit(size, img_size, patch_size, distilled=True, **options)


@register_model("pixel_vit", family="vit", num_classes=10, in_chans=1, image_size=28)
def pixel_vit(
    *, img_size: int = 28, embed_dim: int = 32, depth: int = 4, num_heads: int = 4, **options: Any
) -> nn.Module:
    """A transformer on pixels: every pixel is a token (patch 1), as in Generative Pretraining from Pixels."""
    return VisionTransformer(
        img_size=img_size, patch_size=1, embed_dim=embed_dim, depth=depth, num_heads=num_heads, **options
    )


@register_model("hybrid_vit", family="vit", num_classes=10, in_chans=1, image_size=28)
def hybrid_vit(
    *, in_chans: int, img_size: int = 28, patch_size: int = 2, size: str = "micro", **options: Any
) -> VisionTransformer:
    """The MNIST example's convolutions, then a ViT on their 64-channel map (12×12 for 28×28 inputs)."""
    map_side = (img_size - 4) // 2
    return VisionTransformer(
        in_chans=in_chans,
        img_size=map_side,
        patch_size=patch_size,
        stem=mnist_features(in_chans),
        stem_channels=64,
        **{**size_options(size), **options},
    )
