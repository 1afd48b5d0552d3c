"""Freezing: which backbone parameters train, and frozen BatchNorm layers kept in eval mode.

``backbone``: only what grafting added trains (grafts, replacement blocks, a re-initialised classifier).
``none``: grafting freezes nothing (the backbone's parameters keep the ``requires_grad`` they had).
``stages:<a>,<b>``: the named backbone modules (and everything inside them) are frozen.
"""

from __future__ import annotations

from torch import nn

from attngraft.errors import SpecError
from attngraft.grafting.backbone import within
from attngraft.grafting.model import GraftedModel

FREEZE_MODES = ("backbone", "none", "stages:<names>")


def parse_freeze(freeze: str, model: GraftedModel) -> tuple[str, ...] | None:
    """The backbone module names to freeze (``("",)`` for all of it), or None for ``none``.

    Raises:
        SpecError: For another value, or a stage the backbone lacks (listing its modules' top level).
    """
    if freeze == "backbone":
        return ("",)
    if freeze == "none":
        return None
    kind, _, listed = freeze.partition(":")
    names = tuple(name.strip() for name in listed.strip("[] ").split(",") if name.strip())
    if kind != "stages" or not names:
        raise SpecError(
            f"freeze={freeze!r} is not valid; choose one of {list(FREEZE_MODES)}, e.g. 'stages:layer1,layer2'"
        )
    modules = dict(model.backbone.named_modules())
    for name in names:
        if name not in modules:
            top_level = [child for child, _ in model.backbone.named_children()]
            raise SpecError(f"freeze: the backbone has no module {name!r}; its top-level modules: {top_level}")
    return names


def apply_freeze(model: GraftedModel, freeze: str) -> None:
    """Sets ``requires_grad`` from ``freeze``; records the frozen BatchNorm layers for :meth:`GraftedModel.train`."""
    frozen_prefixes = parse_freeze(freeze, model)
    new = tuple(model.new_modules)

    def is_frozen(name: str) -> bool:
        return frozen_prefixes is not None and within(name, frozen_prefixes) and not within(name, new)

    if frozen_prefixes is not None:
        for name, parameter in model.backbone.named_parameters():
            parameter.requires_grad_(not is_frozen(name))
    for parameter in model.grafts.parameters():
        parameter.requires_grad_(True)
    model.frozen_norms = [
        name
        for name, module in model.backbone.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and is_frozen(name)
    ]
    model.train(model.training)
