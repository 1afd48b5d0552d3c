"""Replace mode: the SASA "stand-alone" transform of a pretrained CNN.

Every 3×3 convolution (groups 1, dilation 1) in the chosen stages becomes a ``local`` attention block with the same
input and output channels and stride (stride 2: attention, then 2×2 average pooling). All other weights stay.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from attngraft.blocks import BLOCKS
from attngraft.blocks.factory import block_options, check_options
from attngraft.errors import SpecError
from attngraft.grafting.backbone import take_submodule
from attngraft.grafting.blocks import build_block
from attngraft.grafting.model import GraftedModel, GraftRecord

# Options each replacement gets from the convolution it replaces.
_PER_CONV = ("out_dim", "stride")


def replaceable_blocks() -> list[str]:
    """Blocks that can stand in for a convolution: their constructor takes ``out_dim`` and ``stride``."""
    return [
        name
        for name in BLOCKS.names()
        if {"out_dim", "stride"} <= set(inspect.signature(BLOCKS.get(name).__init__).parameters)
    ]


def spatial_convolutions(module: nn.Module, prefix: str) -> list[tuple[str, nn.Conv2d]]:
    """The 3×3 convolutions of ``module`` that SASA replaces: groups 1, dilation 1, stride 1 or 2."""
    return [
        (name, conv)
        for name, conv in module.named_modules(prefix=prefix)
        if isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
    ]


def replace_convolutions(model: GraftedModel, block_name: str, stage: str, **options: Any) -> None:
    """Replaces the spatial convolutions of backbone module ``stage`` by ``block_name`` blocks.

    Raises:
        SpecError: For a block that cannot replace a convolution, a stage without 3×3 convolutions, or options
            that do not fit a convolution's channels (naming the convolution).
    """
    if block_name not in replaceable_blocks():
        raise SpecError(
            f"replace in {stage}: {block_name!r} cannot replace a convolution; use one of {replaceable_blocks()}"
        )
    valid = block_options(block_name)
    if valid is not None:
        try:
            check_options(f"block {block_name!r}", options, [option for option in valid if option not in _PER_CONV])
        except TypeError as error:
            raise SpecError(f"replace in {stage}: {error} (out_dim and stride come from each convolution)") from None
    convolutions = spatial_convolutions(model.backbone.get_submodule(stage), stage)
    if not convolutions:
        raise SpecError(f"replace in {stage}: it has no 3×3 convolutions with groups=1 and dilation=1 to replace")
    names = []
    for name, conv in convolutions:
        where = f"replace {name} ({conv.in_channels}→{conv.out_channels} ch, stride {conv.stride[0]}) by {block_name}"
        probe = torch.empty(1, conv.in_channels, 0, 0, device=conv.weight.device)  # channels only; not run
        block = build_block(
            where, block_name, probe, check=False, out_dim=conv.out_channels, stride=conv.stride[0], **options
        )
        model.removed[name] = take_submodule(model.backbone, name, block.to(conv.weight.dtype))
        model.new_modules.append(name)
        names.append(f"backbone.{name}")
    detail = f"{len(names)} 3×3 convolutions"
    model.records.append(GraftRecord("replace", block_name, stage, tuple(names), detail))
