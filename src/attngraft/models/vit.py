"""Vision transformers built from :class:`~attngraft.blocks.EncoderLayer`: ViT, DeepViT, DeiT, pixel and hybrid.

All share one class: a Conv2d patch embedding (kernel = stride = patch), a class token (and, for DeiT, a
distillation token), learned positions, pre-norm encoder layers whose token mixer is any registered token block
(``mhsa`` for ViT, ``reattention`` for DeepViT), a final LayerNorm and a linear head on the class token.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from typing_extensions import override

from attngraft.blocks import EncoderLayer
from attngraft.blocks._ops import check_choice
from attngraft.blocks.factory import block_options, check_options
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


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """(height, width) from one side or two; raises ``ValueError`` naming ``name`` otherwise."""
    sides = (value, value) if isinstance(value, int) else tuple(value)
    if len(sides) != 2 or not all(isinstance(side, int) and side > 0 for side in sides):
        raise ValueError(f"{name} must be a positive side or (height, width), got {value!r}")
    return int(sides[0]), int(sides[1])


class LinearPatchEmbed(nn.Module):
    """vit-pytorch ≥ 1.0's patch embedding: each flattened patch through LayerNorm → Linear → LayerNorm.

    Patches are flattened row by row, channels innermost (``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``).

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, D, H / p1, W / p2), as the Conv2d embedding gives it.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, int], norm_eps: float) -> None:
        super().__init__()
        self.patch_size = patch_size
        patch_dim = in_chans * patch_size[0] * patch_size[1]
        self.norm_in = nn.LayerNorm(patch_dim, eps=norm_eps)
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim, eps=norm_eps)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        rows, cols = self.patch_size
        grid = (height // rows, width // cols)
        patches = x.view(batch, channels, grid[0], rows, grid[1], cols).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(batch, grid[0] * grid[1], rows * cols * channels)  # (B, patches, p1·p2·C)
        tokens = self.norm_out(self.proj(self.norm_in(patches)))  # (B, patches, D)
        return tokens.transpose(1, 2).reshape(batch, -1, *grid)  # (B, D, grid_h, grid_w)


POOLS = ("cls", "mean")
PATCH_EMBEDS = ("conv", "linear")


class VisionTransformer(nn.Module):
    """ViT over the patches of an image, or of a feature map from an optional convolutional ``stem``.

    Args:
        num_classes: Classifier outputs.
        in_chans: Input channels.
        img_size: Side, or (height, width), of the map the patch embedding cuts: the input's, or the stem's output's.
        patch_size: Patch side or (height, width); must divide the map's sides.
        embed_dim: Token width.
        depth: Encoder layers.
        num_heads: Attention heads.
        mlp_ratio: MLP width as a multiple of ``embed_dim`` (truncated to an integer).
        mlp_dim: Exact MLP width; overrides ``mlp_ratio``.
        dim_head: Width of each attention head (vit-pytorch's ``dim_head``); default ``embed_dim // num_heads``.
        mixer: Registered token mixer of every layer ("mhsa", "reattention", "graph").
        distilled: Add a distillation token and head (DeiT).
        stem: Optional module run before the patch embedding (hybrid models).
        stem_channels: Channels of the stem's output map.
        drop_rate: Dropout inside the layers (and after the position embedding unless ``emb_dropout`` is given).
        emb_dropout: Dropout after the position embedding.
        drop_path_rate: Stochastic depth, increasing linearly to this value over the layers.
        pool: "cls" (classify the class token) or "mean" (no class token; classify the mean of the patch tokens,
            as vit-pytorch ≥ 1.0 does).
        patch_embed: "conv" (Conv2d, kernel = stride = patch, as timm) or "linear" (vit-pytorch ≥ 1.0:
            LayerNorm → Linear → LayerNorm over each flattened patch).
        norm_eps: Epsilon of every LayerNorm; default 1e-6, as timm's ViT and DeiT (vit-pytorch uses 1e-5).
        pos_table_size: Rows of the position table; default one per prefix token and patch. More rows make an
            oversized table whose first rows are used, as vit-pytorch does when given an ``image_size`` larger
            than the images (the unused rows are counted by :attr:`unused_parameters`).
        **mixer_options: Extra options of the mixer (its constructor's keywords).

    Raises:
        ValueError: For a size the patches do not divide, an unknown ``pool`` or ``patch_embed``, or an option
            neither the model nor its mixer takes (the valid ones listed).

    Shape:
        - Input: (B, in_chans, H, W), (H, W) = ``img_size`` (other sizes resample the positions).
        - Output: (B, num_classes); DeiT in training mode with ``distilled_training`` set returns
          (class-head, distillation-head) logits, otherwise their mean.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        img_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        dim_head: int | None = None,
        mixer: str = "mhsa",
        distilled: bool = False,
        stem: nn.Module | None = None,
        stem_channels: int | None = None,
        drop_rate: float = 0.0,
        emb_dropout: float | None = None,
        drop_path_rate: float = 0.0,
        pool: str = "cls",
        patch_embed: str = "conv",
        norm_eps: float = 1e-6,
        pos_table_size: int | None = None,
        **mixer_options: Any,
    ) -> None:
        super().__init__()
        image, patch = pair(img_size, "img_size"), pair(patch_size, "patch_size")
        if image[0] % patch[0] or image[1] % patch[1]:
            raise ValueError(f"patch_size {patch_size!r} must divide img_size {img_size!r} (the sides the patches cut)")
        check_vit_options(mixer, pool, patch_embed, distilled, mixer_options)
        if dim_head is not None:
            mixer_options["head_dim"] = dim_head
        self.stem = stem or nn.Identity()
        channels = stem_channels or in_chans
        self.patch_embed: nn.Module = (
            nn.Conv2d(channels, embed_dim, patch, stride=patch)
            if patch_embed == "conv"
            else LinearPatchEmbed(channels, embed_dim, patch, norm_eps)
        )
        self.grid_size = (image[0] // patch[0], image[1] // patch[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.pool = pool
        self.num_prefix_tokens = 0 if pool == "mean" else 2 if distilled else 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        tokens = self.num_prefix_tokens + self.num_patches
        if pos_table_size is not None and pos_table_size < tokens:
            raise ValueError(f"pos_table_size {pos_table_size} must hold the {tokens} tokens (prefix + patches)")
        self.oversized_positions = pos_table_size is not None and pos_table_size > tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_table_size or tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate if emb_dropout is None else emb_dropout)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.Sequential(
            *(
                EncoderLayer(
                    embed_dim,
                    mixer=mixer,
                    mlp_ratio=mlp_ratio,
                    mlp_dim=mlp_dim,
                    norm_eps=norm_eps,
                    drop=drop_rate,
                    drop_path=rate,
                    num_heads=num_heads,
                    **mixer_options,
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
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
        prefix = [token for token in (self.cls_token, self.dist_token) if token is not None]
        tokens = torch.cat([token.expand(x.shape[0], -1, -1) for token in prefix] + [patches], dim=1)
        return self.norm(self.layers(self.pos_drop(tokens + position)))

    @property
    def unused_parameters(self) -> int:
        """Parameters the forward never uses at ``img_size``.

        The rows of an oversized position table past its tokens; 0 otherwise.
        """
        used = self.num_prefix_tokens + self.num_patches
        return (self.pos_embed.shape[1] - used) * self.pos_embed.shape[2]

    def position_embedding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """The learned positions (1, prefix + patches, D), resampled when the patch grid differs from training's.

        An oversized table (``pos_table_size``) gives its first rows instead, for any grid it can hold.
        """
        if self.oversized_positions:
            tokens = self.num_prefix_tokens + grid_height * grid_width
            if tokens > self.pos_embed.shape[1]:
                raise ValueError(f"{tokens} tokens need more than the {self.pos_embed.shape[1]} position rows")
            return self.pos_embed[:, :tokens]
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
        logits = self.head(tokens.mean(dim=1) if self.pool == "mean" else tokens[:, 0])
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(tokens[:, 1])
        if self.distilled_training and self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2


def check_vit_options(mixer: str, pool: str, patch_embed: str, distilled: bool, mixer_options: dict[str, Any]) -> None:
    """Raises ``ValueError`` for an unknown choice or an option neither the ViT nor its mixer takes."""
    check_choice("VisionTransformer", "pool", pool, POOLS)
    check_choice("VisionTransformer", "patch_embed", patch_embed, PATCH_EMBEDS)
    if distilled and pool != "cls":
        raise ValueError("VisionTransformer: a distilled model (DeiT) needs pool='cls' (its tokens are the heads')")
    mixer_takes = block_options(mixer)
    if mixer_takes is not None:
        model_takes = [name for name in inspect.signature(VisionTransformer.__init__).parameters if name != "self"]
        valid = [*model_takes[:-1], *(name for name in mixer_takes if name != "num_heads")]
        check_options(f"VisionTransformer (mixer {mixer!r})", mixer_options, valid)


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


# The seed's ViT table (vit-pytorch ≥ 1.0 models on MNIST): dim 128, depth 6, 4 heads of 64, MLP 256, patch 14 on
# 28×28, LayerNorm → Linear → LayerNorm patch embedding, qkv without bias, LayerNorm epsilon 1e-5, and image_size
# given as the pixel count (784), so the position table has (784 / 14)² + 1 = 3,137 rows of which 5 are used.
SEED_OPTIONS: dict[str, Any] = {
    "embed_dim": 128, "depth": 6, "num_heads": 4, "dim_head": 64, "mlp_dim": 256, "patch_embed": "linear",
    "qkv_bias": False, "norm_eps": 1e-5,
}  # fmt: skip


@register_model("seed_vit", family="vit", num_classes=10, in_chans=1, image_size=28)
def seed_vit(**options: Any) -> VisionTransformer:
    """The seed's ViT: 1,614,866 parameters (1,213,970 used: the position table is oversized, see SEED_OPTIONS)."""
    return VisionTransformer(**{"img_size": 28, "patch_size": 14, "pos_table_size": 3137, **SEED_OPTIONS, **options})


@register_model("seed_deepvit", family="vit", num_classes=10, in_chans=1, image_size=28)
def seed_deepvit(**options: Any) -> VisionTransformer:
    """The seed's DeepViT: 1,615,010 parameters (re-attention with a LayerNorm over heads, as vit-pytorch)."""
    seed = {"img_size": 28, "patch_size": 14, "pos_table_size": 3137, "mixer": "reattention", "norm": "layer"}
    return VisionTransformer(**{**seed, **SEED_OPTIONS, **options})


@register_model("seed_hybrid_vit", family="vit", num_classes=100, in_chans=1, image_size=28)
def seed_hybrid_vit(*, in_chans: int, **options: Any) -> VisionTransformer:
    """The seed's hybrid: the MNIST example's convolutions, then the seed's ViT on their 12×12 map.

    Patch 6 and image_size given as 144 (a 577-row position table, 5 used); its published 1,591,652 parameters
    hold only with a 100-class head (the seed's own set-up; MNIST has 10).
    """
    seed = {
        "img_size": 12,
        "patch_size": 6,
        "pos_table_size": 577,
        "stem": mnist_features(in_chans),
        "stem_channels": 64,
    }
    return VisionTransformer(in_chans=in_chans, **{**seed, **SEED_OPTIONS, **options})
