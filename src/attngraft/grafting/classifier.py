"""The backbone's own classifier and auxiliary heads: a fresh classifier for ``num_classes``, auxiliary outputs off.

A classifier is an ``nn.Linear`` or a 1×1 ``nn.Conv2d`` (see :func:`~attngraft.grafting.backbone.classifier_name`).
timm models re-initialise through their own ``reset_classifier`` (which knows distillation heads and conv heads);
others get a fresh layer of the same kind. torchvision's GoogLeNet and Inception-v3 return named tuples with
auxiliary logits in training mode; grafting turns those auxiliary classifiers off so the grafted model returns one
(B, classes) tensor in both modes.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from torch import nn
from torchvision.models.googlenet import InceptionAux as GoogLeNetAux
from torchvision.models.inception import InceptionAux

from attngraft.errors import SpecError
from attngraft.grafting.backbone import classifier_name, take_submodule
from attngraft.grafting.model import GraftedModel

logger = logging.getLogger(__name__)

AUXILIARY_TYPES = (GoogLeNetAux, InceptionAux)


def classifier_outputs(layer: nn.Module) -> int | None:
    """The class count of a classifier layer (``out_features`` or ``out_channels``), None for other modules."""
    outputs = getattr(layer, "out_features", getattr(layer, "out_channels", None))
    return outputs if isinstance(outputs, int) else None


def fresh_classifier(layer: nn.Module, num_classes: int) -> nn.Module:
    """A newly initialised layer of the same kind as ``layer`` (Linear or 1×1 Conv2d) with ``num_classes`` outputs.

    Raises:
        SpecError: For another kind of layer.
    """
    weight = cast(nn.Parameter, layer.weight)
    options: dict[str, Any] = {"bias": getattr(layer, "bias", None) is not None, "device": weight.device}
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, num_classes, dtype=weight.dtype, **options)
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
        return nn.Conv2d(layer.in_channels, num_classes, kernel_size=1, dtype=weight.dtype, **options)
    raise SpecError(f"cannot re-initialise a {type(layer).__name__} classifier; expected nn.Linear or a 1×1 nn.Conv2d")


def reset_classifier(model: GraftedModel, num_classes: int) -> None:
    """Gives the backbone a fresh classifier with ``num_classes`` outputs unless it already has that many.

    The new layer is recorded in ``model.new_modules`` (so it trains when the backbone is frozen), the old one in
    ``model.removed`` (so ``ungraft`` puts it back), and a note says so.

    Raises:
        SpecError: When the backbone has no classifier to reset.
    """
    backbone = model.backbone
    name = classifier_name(backbone)
    if name is None:
        raise SpecError(
            f"num_classes={num_classes}: {model.name} has no classifier (nn.Linear or 1×1 nn.Conv2d) to "
            "re-initialise; add a head graft, which makes its own classes"
        )
    layer = backbone.get_submodule(name)
    before = classifier_outputs(layer)
    if before == num_classes:
        return
    if callable(getattr(backbone, "reset_classifier", None)) and hasattr(backbone, "pretrained_cfg"):
        modules = dict(backbone.named_modules())
        kept = {id(parameter) for parameter in backbone.parameters()}
        cast(Any, backbone).reset_classifier(num_classes)
        names = _new_module_names(backbone, kept)
        model.removed.update({new: modules[new] for new in names if new in modules})
    else:
        model.removed[name] = take_submodule(backbone, name, fresh_classifier(layer, num_classes))
        names = [name]
    model.new_modules.extend(names)
    note = (
        f"classifier {', '.join(names)}: {type(layer).__name__} with {before} outputs replaced by a freshly "
        f"initialised one with {num_classes} (num_classes); it trains"
    )
    model.notes.append(note)
    logger.info(note)


def _new_module_names(module: nn.Module, kept: set[int]) -> list[str]:
    """The outermost submodules whose parameters are all new (not in ``kept``)."""
    names: list[str] = []
    for name, child in module.named_modules():
        parameters = list(child.parameters())
        new = name and parameters and not any(id(parameter) in kept for parameter in parameters)
        if new and not any(name.startswith(f"{outer}.") for outer in names):
            names.append(name)
    return names


def disable_auxiliary_heads(model: GraftedModel) -> None:
    """Turns off torchvision's auxiliary classifiers (GoogLeNet's ``aux1``/``aux2``, Inception-v3's ``AuxLogits``).

    Their training-mode outputs would turn the logits into a named tuple. The modules are kept for ``ungraft`` and
    ``aux_logits`` is set to False; a note says so.
    """
    backbone = model.backbone
    names = [name for name, child in backbone.named_children() if isinstance(child, AUXILIARY_TYPES)]
    if not names:
        return
    if getattr(backbone, "aux_logits", None) is True:
        model.changed_attributes.append(("", "aux_logits", True))
        cast(Any, backbone).aux_logits = False
    for name in names:
        model.removed[name] = take_submodule(backbone, name, None)
    model.notes.append(
        f"auxiliary classifiers {', '.join(names)} turned off: the model returns only its main logits in training"
    )
