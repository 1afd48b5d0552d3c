"""ResNets with convolutions or SASA local attention as the spatial operator (Ramachandran et al. 2019).

``resnet18`` uses basic blocks; ``resnet26/38/50`` bottlenecks with stage depths [1, 2, 4, 1], [2, 3, 5, 2] and
[3, 4, 6, 3]. The ``sasa_`` versions replace every 3×3 convolution of the bottlenecks by ``local`` attention
(k = 7, 8 heads, 2×2 average pooling after the attention where the stride is 2); ``_attnstem`` versions also
replace the convolutional stem by the SASA attention stem (``local_stem`` + BN + ReLU + 4×4 max-pool).
Strides sit on the 3×3 operator (ResNet v1.5, as torchvision).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath
from torch import nn
from typing_extensions import override

from attngraft.blocks import create_block
from attngraft.models.factory import register_model

STEMS = ("imagenet", "cifar", "attention", "attention_cifar")
STEM_REDUCTION = {"imagenet": 4, "cifar": 1, "attention": 4, "attention_cifar": 1}
SPATIAL = ("conv", "local")


def spatial_operator(kind: str, in_channels: int, out_channels: int, stride: int, **options: Any) -> nn.Module:
    """The 3×3 operator of a block: a 3×3 convolution, or ``local`` attention (k = 7, 8 heads by default)."""
    if kind == "conv":
        if options:
            raise TypeError(f"options {sorted(options)} only apply to the local attention of SASA models")
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    if kind == "local":
        options = {"kernel_size": 7, "num_heads": 8, **options}
        return create_block("local", in_channels, out_dim=out_channels, stride=stride, **options)
    raise ValueError(f"unknown spatial operator {kind!r}; valid: {list(SPATIAL)}")


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        spatial: str = "conv",
        *,
        drop_path: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.conv1 = spatial_operator(spatial, in_channels, width, stride, **options)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = spatial_operator(spatial, width, width, 1, **options)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _shortcut(in_channels, width, stride)
        self.drop_path = _drop_path(drop_path)
        self.relu = nn.ReLU(inplace=True)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.drop_path(self.bn2(self.conv2(out))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 operator (convolution or local attention), 1×1 expand, with a residual connection."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        spatial: str = "conv",
        *,
        drop_path: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = spatial_operator(spatial, width, width, stride, **options)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.drop_path = _drop_path(drop_path)
        self.relu = nn.ReLU(inplace=True)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.drop_path(self.bn3(self.conv3(out))) + self.shortcut(x))


def _drop_path(rate: float) -> nn.Module:
    """Stochastic depth on the residual branch (timm's DropPath), or nothing at rate 0."""
    return DropPath(rate) if rate > 0 else nn.Identity()


def make_stem(kind: str, in_chans: int, channels: int = 64) -> nn.Sequential:
    """The stem of a ResNet, by kind.

    ``imagenet``: 7×7/2 conv + max-pool (÷4); ``cifar``: 3×3/1 conv (÷1); ``attention``: the SASA attention stem
    + 4×4 max-pool (÷4); ``attention_cifar``: the attention stem without the pooling (÷1). The attention stem's
    value embeddings stay indexed by position within a 4×4 window (position modulo 4) in both.
    """
    if kind == "imagenet":
        conv: nn.Module = nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1))
    if kind == "cifar":
        conv = nn.Conv2d(in_chans, channels, 3, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
    if kind in ("attention", "attention_cifar"):
        stem = create_block("local_stem", in_chans, out_dim=channels, num_heads=8, pool_size=4)
        pooling = [nn.MaxPool2d(4, 4)] if kind == "attention" else []
        return nn.Sequential(stem, nn.BatchNorm2d(channels), nn.ReLU(inplace=True), *pooling)
    raise ValueError(f"unknown stem {kind!r}; valid: {list(STEMS)}")


class ResNet(nn.Module):
    """A ResNet: stem, four stages (widths 64·2^i, the first block of stages 2–4 strided), pooling, classifier.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        depths: Blocks per stage.
        num_classes: Classifier outputs.
        in_chans: Input channels.
        stem: "imagenet", "cifar" or "attention".
        spatial: "conv" or "local": the 3×3 operator inside the blocks.
        drop_path_rate: Stochastic depth of the last block's residual branch, rising linearly from 0 over the blocks.
        **spatial_options: Options of the ``local`` operator (``kernel_size``, ``num_heads``, ``compiled``).

    Shape:
        - Input: (B, in_chans, H, W).
        - Output: (B, num_classes).
    """

    feature_info: list[dict[str, Any]]

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, int, int, int],
        *,
        num_classes: int,
        in_chans: int,
        stem: str = "imagenet",
        spatial: str = "conv",
        drop_path_rate: float = 0.0,
        **spatial_options: Any,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        rates = iter(torch.linspace(0, drop_path_rate, sum(depths)).tolist())  # deeper blocks drop more often
        self.stem = make_stem(stem, in_chans)
        reduction = STEM_REDUCTION[stem]
        # Stage metadata in timm's format, so grafting finds stages the same way for timm and attngraft models.
        self.feature_info = [{"num_chs": 64, "reduction": reduction, "module": "stem"}]
        channels = 64
        for index, depth in enumerate(depths):
            width = 64 * 2**index
            blocks = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(channels, width, stride, spatial, drop_path=next(rates), **spatial_options))
                channels = width * block.expansion
            reduction *= 2 if index > 0 else 1
            # torchvision's stage names (layer1..layer4), which graft specs address.
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": channels, "reduction": reduction, "module": f"layer{index + 1}"})
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → the last stage's map (B, num_features, H / 32, W / 32) with the imagenet stem."""
        x = self.stem(x)
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return x

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.forward_features(x)).flatten(1))


DEPTHS = {18: (2, 2, 2, 2), 26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}


def _register(depth: int, variant: str) -> None:
    name = {"conv": f"resnet{depth}", "sasa": f"sasa_resnet{depth}", "attnstem": f"sasa_resnet{depth}_attnstem"}
    block = BasicBlock if depth == 18 else Bottleneck
    spatial = "conv" if variant == "conv" else "local"
    default_stem = "attention" if variant == "attnstem" else "imagenet"

    def build(*, num_classes: int, in_chans: int, stem: str = default_stem, **options: Any) -> nn.Module:
        return ResNet(
            block, DEPTHS[depth], num_classes=num_classes, in_chans=in_chans, stem=stem, spatial=spatial, **options
        )

    build.__doc__ = f"{name[variant]}: ResNet-{depth} ({variant}); options: stem, and local options for SASA."
    register_model(name[variant], family="resnet" if variant == "conv" else "sasa")(build)


for _depth in DEPTHS:
    _register(_depth, "conv")
    if _depth != 18:
        _register(_depth, "sasa")
        _register(_depth, "attnstem")
