"""Backbones by name, their stages, and a forward pass that stops at a stage.

Names: ``torchvision/<model>``, ``timm/<model>`` or ``attngraft/<model>``. Stages come from the model's
``feature_info`` where it has one (timm's format; attngraft's ResNets provide it too), otherwise from torchvision's
feature extraction: the model's top-level modules (and the children of a top-level ``nn.Sequential`` such as
``features``) are traced with ``create_feature_extractor`` and the last module at each stride is a stage, as in
timm's ``feature_info``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import timm
import torch
import torchvision
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from attngraft.blocks import Block
from attngraft.errors import SpecError, UnknownNameError
from attngraft.models import MODELS, create_model
from attngraft.registry import unknown_name_message

SOURCES = ("torchvision", "timm", "attngraft")
# Module types after which a CNN's feature maps end: global pooling, flattening, classifiers.
_HEAD_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)


@dataclass(frozen=True)
class Stage:
    """A named point of a backbone where a feature map comes out.

    Attributes:
        name: Module name, as in ``model.get_submodule(name)`` (e.g. ``layer3``, ``features.6``).
        channels: Channels of the map.
        reduction: Input side divided by the map side (the stride so far).
    """

    name: str
    channels: int
    reduction: int


def split_name(name: str) -> tuple[str, str]:
    """``"torchvision/resnet18"`` → ``("torchvision", "resnet18")``; the error lists the valid sources."""
    source, _, architecture = name.partition("/")
    if source not in SOURCES or not architecture:
        raise SpecError(f"backbone {name!r} must be '<source>/<model>' with source one of {list(SOURCES)}")
    return source, architecture


def create_backbone(name: str, *, num_classes: int | None = None, in_chans: int = 3) -> nn.Module:
    """Builds a backbone with random weights for ``num_classes`` outputs and ``in_chans`` input channels.

    ``num_classes=None`` keeps the model's own default (1000 for torchvision and timm). torchvision models,
    which are always built for 3 channels, get their first convolution rebuilt for ``in_chans``.

    Raises:
        UnknownNameError: For an unknown model, with the closest names.
    """
    source, architecture = split_name(name)
    if source == "attngraft":
        return create_model(architecture, num_classes=num_classes, in_chans=in_chans)
    if source == "timm":
        _check_known(name, architecture, timm.list_models())
        options: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(architecture, pretrained=False, in_chans=in_chans, **options)
    _check_known(name, architecture, torchvision.models.list_models(module=torchvision.models))
    model = torchvision.models.get_model(
        architecture, weights=None, **({} if num_classes is None else {"num_classes": num_classes})
    )
    if in_chans != 3:
        set_input_channels(model, in_chans)
    return model


def _check_known(name: str, architecture: str, valid: list[str]) -> None:
    if architecture not in valid:
        source = name.partition("/")[0]
        message = unknown_name_message(f"{source} model", architecture, valid, list_all=False)
        raise UnknownNameError(f"{message} (see {source}'s list_models())")


def default_image_size(name: str) -> int:
    """The input side a backbone is made for: timm's pretrained config, attngraft's registry, else 224."""
    source, architecture = split_name(name)
    if source == "attngraft":
        return MODELS.get(architecture).image_size
    if source == "timm":
        config = timm.models.get_pretrained_cfg(architecture)
        return int(config.input_size[-1]) if config is not None else 224
    return 224


def first_conv_name(model: nn.Module) -> str:
    """Name of the stem's convolution: timm's ``first_conv`` where declared, else the first ``nn.Conv2d``."""
    config = getattr(model, "pretrained_cfg", None)
    if isinstance(config, dict) and isinstance(config.get("first_conv"), str):
        return str(config["first_conv"])
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise SpecError(f"{type(model).__name__} has no nn.Conv2d, so its input channels cannot be adapted")


def classifier_name(model: nn.Module) -> str | None:
    """Name of the final classifier: timm's ``classifier``, attngraft's ``head``, else the last ``nn.Linear``."""
    config = getattr(model, "pretrained_cfg", None)
    if isinstance(config, dict) and isinstance(config.get("classifier"), str):
        return str(config["classifier"])
    if isinstance(getattr(model, "head", None), nn.Linear):
        return "head"
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linear_names[-1] if linear_names else None


def set_input_channels(model: nn.Module, in_chans: int) -> None:
    """Rebuilds the stem's convolution for ``in_chans`` inputs (random weights; loading adapts pretrained ones)."""
    name = first_conv_name(model)
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise SpecError(f"first convolution {name!r} of {type(model).__name__} is a {type(conv).__name__}")
    replacement = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    set_submodule(model, name, replacement)


def within(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one ("" holds everything)."""
    return any(prefix == "" or name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Puts ``module`` at dotted ``name`` and returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    previous = parent.get_submodule(child)
    parent.add_module(child, module)  # add_module replaces in place, keeping the parent's child order
    return previous


def list_stages(model: nn.Module, *, in_chans: int, image_size: int = 224) -> list[Stage]:
    """The model's stages, in forward order.

    Uses ``model.feature_info`` (timm's list of ``{"module", "num_chs", "reduction"}``) when present; otherwise
    traces the candidates with torchvision's feature extraction on one ``image_size`` input.
    """
    info = _feature_info(model)
    if info is not None:
        return [Stage(entry["module"], int(entry["num_chs"]), int(entry["reduction"])) for entry in info]
    groups = _trunk_groups(model)
    names = [name for top, children in groups for name in children or [top]]
    maps = probe_features(model, names, probe_sample(model, in_chans=in_chans, image_size=image_size))
    for top, children in groups:
        if children:  # a Sequential's output is its last child's (tracing gives both names one node)
            maps[top] = maps[children[-1]]

    def reduction(name: str) -> int | None:
        features = maps[name]
        return round(image_size / features.shape[-1]) if features.ndim == 4 else None

    by_reduction: dict[int, Stage] = {}
    for top, children in groups:
        # A container whose children all work at one stride (a ResNet stage) is one stage; one that spans several
        # strides (torchvision's ``features``) contributes its children.
        single = len({reduction(child) for child in children}) <= 1
        for name in [top] if single else children:
            stride = reduction(name)
            if stride is not None:  # in forward order, so the last module at a stride wins
                by_reduction[stride] = Stage(name, maps[name].shape[1], stride)
    return list(by_reduction.values())


def _feature_info(model: nn.Module) -> list[dict[str, Any]] | None:
    """The model's stage list in timm's format (``{"module", "num_chs", "reduction"}`` per stage), if it has one."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, Sequence) and info and all(isinstance(entry, dict) for entry in info):
        return list(info)
    return None


def _trunk_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Top-level modules up to global pooling or the classifier, each with its children if it is a Sequential."""
    _, nodes = get_graph_node_names(model, tracer_kwargs=tracer_options())  # eval-mode node names

    def traced(name: str) -> bool:  # some containers (e.g. RegNet's stem) trace as one node
        return any(node == name or node.startswith(f"{name}.") for node in nodes)

    groups: list[tuple[str, list[str]]] = []
    for name, child in model.named_children():
        if isinstance(child, _HEAD_TYPES):
            break
        if not traced(name):  # runs only in training (auxiliary heads)
            continue
        children = (
            [f"{name}.{inner}" for inner, _ in child.named_children()] if isinstance(child, nn.Sequential) else []
        )
        groups.append((name, children if all(traced(inner) for inner in children) else []))
    return groups


def tracer_options() -> dict[str, Any]:
    """``tracer_kwargs`` for torch.fx feature extraction: timm's untraceable layers and attngraft's blocks as leaves."""
    leaf_modules = [*get_notrace_modules(), Block]  # type: ignore[no-untyped-call]
    return {"leaf_modules": leaf_modules, "autowrap_functions": list(get_notrace_functions())}  # type: ignore[no-untyped-call]


def probe_sample(model: nn.Module, *, in_chans: int, image_size: int) -> torch.Tensor:
    """A fixed random input (1, in_chans, image_size, image_size) on the model's device and dtype."""
    parameter = next(model.parameters(), None)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, in_chans, image_size, image_size, generator=generator)
    return sample if parameter is None else sample.to(parameter.device, parameter.dtype)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Runs the block in eval mode without autograd, then restores the module's mode (its ``train()`` override too)."""
    was_training = module.training
    try:
        with torch.no_grad():
            yield module.eval()
    finally:
        module.train(was_training)


def probe_features(model: nn.Module, names: Sequence[str], sample: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the named modules for ``sample`` (from :func:`probe_sample`), computed in eval mode.

    Uses torchvision's ``create_feature_extractor``. The model's mode is restored afterwards and no running
    statistic moves. Forward hooks (inserted grafts) are traced along.

    Raises:
        SpecError: For a name that is not a module of ``model``, listing its stages.
    """
    check_modules(model, names, in_chans=sample.shape[1], image_size=sample.shape[-1])
    with evaluating(model):
        try:
            extractor = create_feature_extractor(model, return_nodes=list(names), tracer_kwargs=tracer_options())
        except (ValueError, TypeError, RuntimeError, torch.fx.proxy.TraceError) as error:
            raise SpecError(f"cannot trace {type(model).__name__} to {list(names)}: {error}") from None
        try:
            outputs = extractor(sample)
        except (RuntimeError, ValueError) as error:
            raise SpecError(
                f"{type(model).__name__} fails on a {tuple(sample.shape)} probe input "
                f"({str(error).splitlines()[0]}); a larger image_size may fit"
            ) from None
    return {name: outputs[name] for name in names}


def check_modules(model: nn.Module, names: Sequence[str], *, in_chans: int, image_size: int) -> None:
    """Raises ``SpecError`` for a name that is not a module of ``model``, listing the model's stages."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise SpecError(
                f"{type(model).__name__} has no module {name!r}; {stage_listing(model, in_chans, image_size)}"
            )


def times_called(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """How often one forward calls each leaf module (torchvision's ResNet blocks reuse their ReLU); else 1."""
    _, nodes = get_graph_node_names(model, tracer_kwargs=tracer_options())
    return {
        name: max(1, sum(re.fullmatch(rf"{re.escape(name)}(_\d+)?", node) is not None for node in nodes))
        for name in names
    }


def used_module_names(model: nn.Module, stage: str) -> set[str]:
    """Names of the modules that computing ``stage``'s output runs (those in the traced graph up to it)."""
    extractor = create_feature_extractor(model, return_nodes=[stage], tracer_kwargs=tracer_options())
    return {name for name, _ in extractor.named_modules() if name}


def stage_listing(model: nn.Module, in_chans: int, image_size: int) -> str:
    """The stages as "stages: layer1 (64 ch, /4), ..." for error messages."""
    if _feature_info(model) is None and not _trunk_groups(model):
        return "it has no stages"
    stages = list_stages(model, in_chans=in_chans, image_size=image_size)
    return "stages: " + ", ".join(f"{stage.name} ({stage.channels} ch, /{stage.reduction})" for stage in stages)


def forward_until(model: nn.Module, stage: str, x: torch.Tensor) -> torch.Tensor:
    """Runs ``model`` on ``x`` up to ``stage`` and returns that module's output; later modules do not run.

    timm models with ``forward_intermediates`` use it (``stop_early``); other models run their children in
    order, descending into ``nn.Sequential`` containers towards ``stage``.

    Shape:
        - Input: (B, in_chans, H, W).
        - Output: the stage's map, e.g. (B, C, H / reduction, W / reduction).
    """
    info = _feature_info(model)
    if hasattr(model, "forward_intermediates") and info is not None:
        modules = [entry["module"] for entry in info]
        if stage in modules:
            outputs = cast(Any, model).forward_intermediates(
                x, indices=[modules.index(stage)], stop_early=True, intermediates_only=True
            )
            return outputs[0]
    return _run_children_until(model, stage.split("."), x)


def _run_children_until(module: nn.Module, path: list[str], x: torch.Tensor) -> torch.Tensor:
    for name, child in module.named_children():
        if name == path[0]:
            if len(path) == 1:
                return child(x)
            if not isinstance(child, nn.Sequential):
                raise SpecError(f"cannot stop inside {name!r}: it is a {type(child).__name__}, not an nn.Sequential")
            return _run_children_until(child, path[1:], x)
        x = child(x)
    raise SpecError(f"{type(module).__name__} has no child {path[0]!r}")
