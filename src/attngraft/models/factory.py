"""The model registry: ``create_model(name, num_classes=..., in_chans=..., **kwargs)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from attngraft.registry import Registry

Builder = Callable[..., nn.Module]
# The attribute under which create_model records its arguments on the model it builds.
ZOO_CONFIG = "zoo_config"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and the input it is meant for by default.

    Attributes:
        builder: ``builder(num_classes=..., in_chans=..., **kwargs)`` returns the module.
        family: "resnet", "sasa", "vit", "swin" or "cnn".
        num_classes: Default number of classes.
        in_chans: Default input channels.
        image_size: Default input side (the model's ``img_size`` where it has one).
    """

    builder: Builder
    family: str
    num_classes: int
    in_chans: int
    image_size: int


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str, *, family: str, num_classes: int = 1000, in_chans: int = 3, image_size: int = 224
) -> Callable[[Builder], Builder]:
    """Decorator registering a model builder under ``name`` with its default input."""

    def decorator(builder: Builder) -> Builder:
        MODELS.add(name, ModelSpec(builder, family, num_classes, in_chans, image_size))
        return builder

    return decorator


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
    """Builds the model registered as ``name``; unset ``num_classes``/``in_chans`` take the model's defaults.

    The model's ``zoo_config`` attribute records the arguments (defaults filled in): ``create_model(**zoo_config)``
    builds the same architecture again (``attngraft.save`` relies on it).

    Raises:
        UnknownNameError: For an unknown name, listing the valid ones.
        TypeError: For options the model does not take.
    """
    spec = MODELS.get(name)
    num_classes = spec.num_classes if num_classes is None else num_classes
    in_chans = spec.in_chans if in_chans is None else in_chans
    model = spec.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    # What rebuilds it (attngraft.save writes it beside the weights): create_model(**model.zoo_config).
    setattr(model, ZOO_CONFIG, {"name": name, "num_classes": num_classes, "in_chans": in_chans, **kwargs})
    return model


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by glob ``pattern`` and ``family``."""
    return [name for name in MODELS.names(pattern) if family is None or MODELS.get(name).family == family]
