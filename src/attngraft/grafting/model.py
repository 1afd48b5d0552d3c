"""The grafted model: the untouched backbone, the new modules beside it, and what was changed where."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import nn
from typing_extensions import override

from attngraft.grafting.backbone import forward_until, set_submodule


@dataclass(frozen=True)
class GraftRecord:
    """One graft, for the summary.

    Attributes:
        mode: "head", "insert" or "replace".
        block: Registered block name.
        location: Where it sits (a stage, a module, or the replaced convolutions' stage).
        modules: Names, in the grafted model, of the modules it added.
        detail: The feature map it sees, or what it replaced.
    """

    mode: str
    block: str
    location: str
    modules: tuple[str, ...]
    detail: str


def main_logits(output: Any) -> torch.Tensor:
    """The logits of a backbone's output: the output itself, or the ``logits`` of a named tuple with auxiliary ones.

    Raises:
        TypeError: For any other output (a model whose training forward returns several tensors, say).
    """
    if isinstance(output, torch.Tensor | torch.fx.Proxy):
        return output  # type: ignore[return-value]
    if isinstance(output, tuple) and isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits  # type: ignore[attr-defined]
    raise TypeError(
        f"the backbone returned a {type(output).__name__}, not a logits tensor; a grafted model returns (B, classes)"
    )


class GraftedModel(nn.Module):
    """A backbone with grafts: a head on a stage's map, blocks inserted after modules, convolutions replaced.

    ``backbone`` keeps its own parameter names: inserted blocks live in ``grafts`` and run from forward hooks on
    the module they follow, the head lives in ``grafts["head"]``, and only replaced convolutions (and, for a
    head, the unused modules after its stage) change inside the backbone. :meth:`ungraft` gives the original back.

    ``spec`` is the complete spec that rebuilds the model (``build(model.spec)``; grafts in dict form) for a model
    made by ``build``, and None for one grafted onto a module the user made (no backbone name to rebuild from);
    ``graft_entries`` holds the grafts' dict forms either way.

    Shape:
        - Input: (B, in_chans, H, W).
        - Output: (B, num_classes).
    """

    def __init__(self, backbone: nn.Module, *, name: str, weights: str, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.grafts = nn.ModuleDict()
        self.name = name
        self.weights = weights
        self.in_chans = in_chans
        self.image_size = image_size
        self.head_stage: str | None = None
        self.records: list[GraftRecord] = []
        self.notes: list[str] = []
        # Backbone modules that are new (replacements, a re-initialised classifier): never frozen.
        self.new_modules: list[str] = []
        self.frozen_norms: list[str] = []
        self.removed: dict[str, nn.Module] = {}  # original modules taken out, kept (unregistered) for ungraft()
        self.dropped: list[str] = []  # backbone modules a head made unused
        self.head_modules: set[str] = set()  # backbone modules the head's truncated forward runs
        self.hooks: dict[str, tuple[str, int]] = {}  # grafts key → (backbone module, id of the forward hook on it)
        # Backbone attributes grafting changed (e.g. ``aux_logits``): (module name, attribute, original value).
        self.changed_attributes: list[tuple[str, str, Any]] = []
        # The spec that rebuilds this model (set by ``build``); None for a model grafted onto a user's module.
        self.spec: dict[str, Any] | None = None
        self.graft_entries: list[dict[str, Any]] = []  # the grafts applied, in their dict (spec/YAML) form
        self._requires_grad = {name: parameter.requires_grad for name, parameter in backbone.named_parameters()}
        self.training = backbone.training

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Re-registers the insert hooks after unpickling or deepcopy, with ids fresh in this process.

        Hook ids count from 0 in every process, so a pickled id could be handed out again and a user's hook would
        then silently replace an inserted block.
        """
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        for attribute, default in (("changed_attributes", []), ("spec", None), ("graft_entries", [])):
            self.__dict__.setdefault(attribute, default)  # models pickled before these attributes existed
        for key, (location, hook_id) in self.hooks.items():
            target = self.backbone.get_submodule(location)
            hook = target._forward_hooks.pop(hook_id)
            self.hooks[key] = (location, target.register_forward_hook(hook).id)

    @override
    def _apply(self, fn: Any, recurse: bool = True) -> Self:
        """Moves or casts the modules kept for :meth:`ungraft` along with the model."""
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        for module in self.removed.values():
            module._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_stage is None:
            return main_logits(self.backbone(x))
        return self.grafts["head"](forward_until(self.backbone, self.head_stage, x))

    @override
    def train(self, mode: bool = True) -> Self:
        """Sets the mode, keeping frozen BatchNorm layers in eval mode so their running statistics never move."""
        super().train(mode)
        for name in self.frozen_norms:
            self.backbone.get_submodule(name).eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimiser should get: those that require grad."""
        return (parameter for parameter in self.parameters() if parameter.requires_grad)

    def graft_modules(self) -> dict[str, nn.Module]:
        """Every module a graft added, by its name in this model."""
        return {name: self.get_submodule(name) for record in self.records for name in record.modules}

    def ungraft(self) -> nn.Module:
        """Removes every graft and returns the backbone as it was: hooks removed, original modules put back.

        The grafted model is unusable afterwards. Parameters get their original ``requires_grad`` back;
        BatchNorm layers follow the backbone's mode again.
        """
        for location, hook_id in self.hooks.values():
            del self.backbone.get_submodule(location)._forward_hooks[
                hook_id
            ]  # the handle itself would not survive deepcopy/pickling
        for name, module in reversed(self.removed.items()):  # a dropped stage goes back before what was inside it
            set_submodule(self.backbone, name, module)
        for name, attribute, value in reversed(self.changed_attributes):
            setattr(self.backbone.get_submodule(name), attribute, value)
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad_(self._requires_grad.get(name, True))
        self.hooks, self.removed, self.dropped, self.frozen_norms, self.changed_attributes = {}, {}, [], [], []
        return self.backbone.train(self.training)
