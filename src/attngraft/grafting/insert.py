"""Insert mode: a map block after a stage or residual block, through a zero-initialised residual gate.

The gate makes the grafted model give exactly the original logits at step 0. The block runs from a forward hook
on the module it follows, so the backbone's own modules and parameter names stay as they were.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attngraft.blocks import BLOCKS, Block, ResidualGate, list_blocks
from attngraft.errors import SpecError
from attngraft.grafting.blocks import build_block, describe_map
from attngraft.grafting.model import GraftedModel, GraftRecord


class InsertedBlock(ResidualGate):
    """``x + gate ⊙ block(x)`` on the output of the backbone module at ``location`` (gate starts at zero).

    With ``channels_last`` the module gives (B, H, W, C) maps (hierarchical transformers); the hook permutes them
    to (B, C, H, W) for the block and back.

    Shape:
        - Input: (B, C, H, W), the output of ``location``.
        - Output: (B, C, H, W).
    """

    def __init__(self, block: Block, location: str, *, channels_last: bool = False) -> None:
        super().__init__(block, block.dim, channel_axis=-3)
        self.location = location
        self.channels_last = channels_last

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook on the module at ``location``: replaces its output. A bound method, so deepcopy works."""
        if not isinstance(output, torch.Tensor | torch.fx.Proxy):
            raise TypeError(f"insert after {self.location!r}: that module returns {type(output).__name__}, not a map")
        if self.channels_last:
            return self(output.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H, W, C) → (B, C, H, W) and back
        return self(output)

    def extra_repr(self) -> str:  # noqa: D102
        return f"after={self.location!r}" + (", channels_last=True" if self.channels_last else "")


def insert_block(
    model: GraftedModel,
    block_name: str,
    location: str,
    features: torch.Tensor,
    *,
    calls: int = 1,
    channels_last: bool = False,
    **options: Any,
) -> None:
    """Inserts ``block_name`` after backbone module ``location``, whose probed output is ``features``.

    ``calls`` is how often one forward runs ``location`` (from :func:`~attngraft.grafting.backbone.probe_outputs`);
    ``channels_last`` says that ``features`` is (1, H, W, C).

    Raises:
        SpecError: For a token block, or a block that does not fit the map (channels, heads, window size).
    """
    if channels_last and features.ndim == 4:
        features = features.permute(0, 3, 1, 2)  # (1, C, H, W), as the block sees it
    layout = ", channels-last" if channels_last else ""
    where = f"insert {block_name} after {location} ({describe_map(features)}{layout})"
    if block_name in BLOCKS and BLOCKS.get(block_name).layout != "map":
        raise SpecError(f"{where}: {block_name} takes tokens; insert takes map blocks: {list_blocks(layout='map')}")
    if features.ndim != 4:
        raise SpecError(f"{where}: {location} does not output a (B, C, H, W) map")
    if calls > 1:
        raise SpecError(f"{where}: {location} runs {calls} times per forward; insert after a stage or a block instead")
    block = build_block(where, block_name, features, **options)
    inserted = InsertedBlock(block, location, channels_last=channels_last).to(features.device)
    key = "insert_" + location.replace(".", "_")
    if key in model.grafts:
        raise SpecError(f"{where}: a block is already inserted there")
    model.grafts[key] = inserted
    handle = model.backbone.get_submodule(location).register_forward_hook(inserted.hook)
    model.hooks[key] = (location, handle.id)
    model.records.append(
        GraftRecord("insert", block_name, f"after {location}", (f"grafts.{key}",), describe_map(features) + layout)
    )
