"""Building a graft's block for a probed feature map, with errors that name both the block and the map."""

from __future__ import annotations

from typing import Any

import torch

from attngraft.blocks import Block, create_block
from attngraft.errors import SpecError, UnknownNameError
from attngraft.grafting.backbone import evaluating


def describe_map(features: torch.Tensor) -> str:
    """The map as "256 ch, 14×14" for a (1, C, H, W) probe output."""
    if features.ndim != 4:
        return f"output shape {tuple(features.shape)}"
    return f"{features.shape[1]} ch, {features.shape[2]}×{features.shape[3]}"


def build_block(where: str, name: str, features: torch.Tensor, *, check: bool = True, **options: Any) -> Block:
    """``create_block(name, C, **options)`` for a (1, C, H, W) map; with ``check``, runs it once on the map.

    Raises:
        SpecError: Naming ``where`` (the graft and its map) and the block's own complaint.
    """
    try:
        block = create_block(name, features.shape[1], **options).to(features.device)
    except UnknownNameError as error:
        raise SpecError(f"{where}: {error}") from None
    except (ValueError, TypeError) as error:
        raise SpecError(f"{where}: {error}") from None
    if check:
        _check_fits(where, block, features)
    return block


def _check_fits(where: str, block: Block, features: torch.Tensor) -> None:
    try:
        with evaluating(block):
            output = block(features)
    except (ValueError, RuntimeError) as error:
        raise SpecError(f"{where}: the block does not fit this map: {error}") from None
    if output.shape != features.shape:
        raise SpecError(
            f"{where}: the block turns {tuple(features.shape)} into {tuple(output.shape)}; it must keep the shape"
        )
