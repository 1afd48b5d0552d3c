"""Parameter and FLOP counts of a model at an input shape (``torch.utils.flop_counter``, on the meta device)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attngraft.blocks import Block


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (or of trainable ones)."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad or not trainable_only)


def count_used_parameters(model: nn.Module) -> int:
    """Parameters the forward uses: all, less what modules report as ``unused_parameters``.

    (An oversized position table's extra rows, for instance.)
    """
    unused = sum(int(getattr(module, "unused_parameters", 0)) for module in model.modules())
    return count_parameters(model) - unused


def flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (2 per multiply-add) at ``input_shape``, counted without computing anything.

    Matrix products, convolutions and attention are counted by :class:`FlopCounterMode`; blocks whose attention is
    elementwise (the k×k local blocks) add their own count through :meth:`Block.attention_flops`.
    """
    meta_model = copy.deepcopy(model).to("meta").eval()
    extra = 0

    def count_block(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal extra
        if isinstance(module, Block):
            extra += module.attention_flops(inputs[0].shape)

    handles = [module.register_forward_pre_hook(count_block) for module in meta_model.modules()]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta_model(torch.empty(*input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return int(counter.get_total_flops()) + extra
