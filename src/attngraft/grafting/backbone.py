"""Backbones by name, their stages, and a forward pass that stops at a stage.

Names: ``torchvision/<model>``, ``timm/<model>`` or ``attngraft/<model>``. Stages come from the model's
``feature_info`` where it has one (timm's format; attngraft's ResNets provide it too), otherwise from torchvision's
feature extraction: the model's top-level modules (and the children of a top-level ``nn.Sequential`` such as
``features``) are traced with ``create_feature_extractor`` and the last module at each stride is a stage, as in
timm's ``feature_info``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import timm
import torch
import torchvision
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

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
        layout: "NCHW" for (B, C, H, W), "NHWC" for channels-last (B, H, W, C) (hierarchical transformers), None
            when the probe cannot tell (H = W = C).
    """

    name: str
    channels: int
    reduction: int
    layout: str | None = "NCHW"
    size: tuple[int, int] | None = None  # (H, W) of the map at the probe's image size

    def describe(self) -> str:
        """The stage as "layer4 (512 ch, /32)", with the layout when it is not NCHW."""
        layout = {"NCHW": "", "NHWC": ", channels-last"}.get(str(self.layout), ", layout unknown")
        return f"{self.name} ({self.channels} ch, /{self.reduction}{layout})"


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
    """Name of the final classifier, or None.

    timm's declared ``classifier`` where it names a module, attngraft's ``head``; else the model's last module with
    parameters (in registration order) when it is an ``nn.Linear`` or a 1×1 ``nn.Conv2d`` (SqueezeNet's
    ``classifier.1``, timm's conv heads); else the last ``nn.Linear``.
    """
    config = getattr(model, "pretrained_cfg", None)
    modules = dict(model.named_modules())
    if isinstance(config, dict) and isinstance(config.get("classifier"), str) and config["classifier"] in modules:
        return str(config["classifier"])
    if isinstance(getattr(model, "head", None), nn.Linear):
        return "head"
    with_parameters = [name for name, module in modules.items() if any(True for _ in module.parameters(False))]
    if with_parameters and is_classifier_layer(modules[with_parameters[-1]]):
        return with_parameters[-1]
    linear_names = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    return linear_names[-1] if linear_names else None


def is_classifier_layer(module: nn.Module) -> bool:
    """Whether ``module`` can be a classifier: an ``nn.Linear`` or a 1×1, ungrouped ``nn.Conv2d``."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


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


def set_submodule(model: nn.Module, name: str, module: nn.Module | None) -> nn.Module | None:
    """Puts ``module`` (None: an empty slot) at dotted ``name``; returns what was there (None: an empty slot)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if child not in parent._modules:
        parent.get_submodule(child)  # raises AttributeError naming the missing module
    previous = parent._modules[child]
    parent.add_module(child, module)  # add_module replaces in place, keeping the parent's child order
    return previous


def take_submodule(model: nn.Module, name: str, replacement: nn.Module | None) -> nn.Module:
    """Puts ``replacement`` at dotted ``name`` and returns the module taken out (for ``GraftedModel.removed``).

    Raises:
        SpecError: If the slot at ``name`` is empty.
    """
    previous = set_submodule(model, name, replacement)
    if previous is None:
        raise SpecError(f"{type(model).__name__} has no module at {name!r} (the slot is empty)")
    return previous


def list_stages(model: nn.Module, *, in_chans: int, image_size: int = 224) -> list[Stage]:
    """The model's stages, in forward order, with channels, reduction and layout from their real outputs.

    The candidates are ``model.feature_info``'s modules (timm's list of ``{"module", "num_chs", "reduction"}``)
    when present; otherwise the top-level modules up to global pooling or the classifier, and the children of
    those that span several strides (torchvision's ``features``), of which the last at each stride is a stage.
    Either way one ``image_size`` probe input runs through the model and each candidate's output is measured;
    modules that return no single 4-D map (tuples, dicts, tokens) are no stages.
    """
    sample = probe_sample(model, in_chans=in_chans, image_size=image_size)
    info = _feature_info(model)
    if info is not None:
        modules = dict(model.named_modules())
        names = [str(entry["module"]) for entry in info if entry.get("module") in modules]
    else:
        groups = _trunk_groups(model)
        names = [name for group in groups for name in group.names]
    outputs, _ = probe_outputs(model, names, sample)
    layouts = output_layouts(model, outputs, sample)

    def stage(name: str) -> Stage | None:
        return _stage(name, outputs.get(name), image_size, layouts.get(name))

    if info is not None:
        return [found for found in map(stage, names) if found is not None]
    by_reduction: dict[int, Stage] = {}
    for group in groups:
        children, top = [stage(name) for name in group.children], stage(group.top)
        # A container whose children all work at one stride (a ResNet stage) is one stage; one that spans several
        # strides (torchvision's ``features``), that also holds the classifier, or that is a ModuleList that never
        # runs as a whole contributes its children.
        single = top is not None and group.whole and len({child.reduction for child in children if child}) <= 1
        for found in [top] if single else children:
            if found is not None:  # in forward order, so the last module at a stride wins
                by_reduction[found.reduction] = found
    return list(by_reduction.values())


def output_layouts(model: nn.Module, outputs: Mapping[str, object], sample: torch.Tensor) -> dict[str, str | None]:
    """The layouts ("NCHW", "NHWC" or None) of the probed 4-D ``outputs`` of ``model`` for ``sample``.

    A shape that cannot tell (H = W = C, as a 16-channel 16×16 map) is probed again at 1.5 times the side: the
    axes that grow are the spatial ones. None remains where that probe fails too.
    """
    layouts = {
        name: map_layout(output.shape, declared_channels(model, name))
        for name, output in outputs.items()
        if isinstance(output, torch.Tensor) and output.ndim == 4
    }
    unclear = [name for name, layout in layouts.items() if layout is None]
    if unclear:
        larger = probe_sample(model, in_chans=sample.shape[1], image_size=sample.shape[-1] * 3 // 2)
        try:
            again, _ = probe_outputs(model, unclear, larger)
        except SpecError:  # a model made for one input size
            again = {}
        for name in unclear:
            first, second = outputs[name], again.get(name)
            if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and second.ndim == 4:
                grown = [axis for axis in (1, 2, 3) if first.shape[axis] != second.shape[axis]]
                layouts[name] = {"2,3": "NCHW", "1,2": "NHWC"}.get(",".join(map(str, grown)))
    return layouts


def map_layout(shape: Sequence[int], channels: int | None = None) -> str | None:
    """The layout of a 4-D map from a square probe input: "NCHW", "NHWC", or None when the shape cannot tell.

    ``channels`` (a declared channel count such as timm's ``num_chs``) decides first; otherwise the two spatial
    sides are the two equal ones.
    """
    _, first, second, last = shape
    if channels is not None and (first == channels) != (last == channels):
        return "NCHW" if first == channels else "NHWC"
    if (second == last) != (first == second):
        return "NCHW" if second == last else "NHWC"
    return None


def _stage(name: str, output: object, image_size: int, layout: str | None) -> Stage | None:
    """The stage a module's probed output describes, or None if it is no single 4-D map."""
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        return None
    channel_axis, (height, width) = (-1, output.shape[1:3]) if layout == "NHWC" else (1, output.shape[2:])
    reduction = max(1, round(image_size / width))
    return Stage(name, int(output.shape[channel_axis]), reduction, layout, (int(height), int(width)))


def _feature_info(model: nn.Module) -> list[dict[str, Any]] | None:
    """The model's stage list in timm's format (``{"module", "num_chs", "reduction"}`` per stage), if it has one."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, Sequence) and info and all(isinstance(entry, dict) for entry in info):
        return list(info)
    return None


def declared_channels(model: nn.Module, name: str) -> int | None:
    """The channels ``model.feature_info`` declares for module ``name``, if any (a hint for :func:`map_layout`)."""
    for entry in _feature_info(model) or []:
        if entry.get("module") == name and isinstance(entry.get("num_chs"), int):
            return int(entry["num_chs"])
    return None


@dataclass(frozen=True)
class _Group:
    """A top-level module of the trunk and the children that may be stages (a Sequential's or ModuleList's).

    ``whole`` is False when the module also holds the classifier, so only its children before it count.
    """

    top: str
    children: tuple[str, ...]
    whole: bool

    @property
    def names(self) -> tuple[str, ...]:
        return (self.top, *self.children)


def _trunk_groups(model: nn.Module) -> list[_Group]:
    """Top-level modules up to global pooling or the classifier, with their children if they are containers."""
    classifier = classifier_name(model)
    groups: list[_Group] = []
    for name, child in model.named_children():
        if isinstance(child, _HEAD_TYPES) or name == classifier:
            break
        children = list(child.named_children()) if isinstance(child, nn.Sequential | nn.ModuleList) else []
        if classifier is None or not within(classifier, [name]):
            groups.append(_Group(name, tuple(f"{name}.{inner}" for inner, _ in children), True))
            continue
        # The classifier sits inside (SqueezeNet's ``classifier``): its children before it with parameters count.
        kept = []
        for inner, module in children:
            qualified = f"{name}.{inner}"
            if within(classifier, [qualified]) or isinstance(module, _HEAD_TYPES):
                break
            kept.append(qualified)
        if any(True for kept_name in kept for _ in model.get_submodule(kept_name).parameters()):
            groups.append(_Group(name, tuple(kept), False))
        break
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


def probe_outputs(
    model: nn.Module, names: Sequence[str], sample: torch.Tensor
) -> tuple[dict[str, object], dict[str, int]]:
    """What the named modules return for ``sample`` in one eval-mode forward, and how often each ran.

    Forward hooks record the real outputs, as an inserted block's hook sees them (tuples and dicts included;
    forward hooks of earlier grafts run along). A module that runs several times keeps its last output; one that
    does not run in eval mode (an auxiliary head) is missing. The mode is restored and no running statistic moves.

    Raises:
        SpecError: For a name that is not a module of ``model`` (listing its stages), or a forward that fails.
    """
    check_modules(model, names, in_chans=sample.shape[1], image_size=sample.shape[-1])
    outputs: dict[str, object] = {}
    calls = dict.fromkeys(names, 0)

    def recorder(name: str) -> Callable[[nn.Module, Any, object], None]:
        def record(module: nn.Module, args: Any, output: object) -> None:
            # A copy: later in-place operations (DenseNet's ReLU after ``features``) must not change it.
            outputs[name] = output.clone() if isinstance(output, torch.Tensor) else output
            calls[name] += 1

        return record

    handles = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in dict.fromkeys(names)]
    try:
        with evaluating(model):
            model(sample)
    except (RuntimeError, ValueError, IndexError) as error:
        raise SpecError(
            f"{type(model).__name__} fails on a {tuple(sample.shape)} probe input "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); a larger image_size may fit"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls


def probe_features(model: nn.Module, names: Sequence[str], sample: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the named modules for ``sample`` (from :func:`probe_sample`), computed in eval mode.

    Raises:
        SpecError: For a name that is not a module of ``model`` (listing its stages), a module that does not run
            in the forward, or one that returns something other than one tensor (a tuple, a list, a dict).
    """
    outputs, _ = probe_outputs(model, names, sample)
    return {name: check_tensor(model, name, outputs) for name in names}


def check_tensor(model: nn.Module, name: str, outputs: dict[str, object]) -> torch.Tensor:
    """``outputs[name]`` if it is one tensor; else a ``SpecError`` saying what the module gives instead."""
    if name not in outputs:
        raise SpecError(
            f"{name} does not run in {type(model).__name__}'s forward (in eval mode), so it cannot be grafted"
        )
    output = outputs[name]
    if not isinstance(output, torch.Tensor):
        raise SpecError(
            f"{name} returns {describe_output(output)}, not one feature map, so it cannot be grafted there "
            "(multi-branch modules: graft after a module that outputs a single (B, C, H, W) map)"
        )
    return output


def describe_output(output: object) -> str:
    """A short description of a module output for messages: "a tuple of 2 tensors (1, 18, 8, 8), (1, 36, 4, 4)"."""
    if isinstance(output, torch.Tensor):
        return f"a tensor {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)[:6]}"
    if isinstance(output, Sequence) and not isinstance(output, str):
        shapes = [str(tuple(item.shape)) if isinstance(item, torch.Tensor) else type(item).__name__ for item in output]
        return f"a {type(output).__name__} of {len(output)} ({', '.join(shapes[:4])})"
    return f"a {type(output).__name__}"


def check_modules(model: nn.Module, names: Sequence[str], *, in_chans: int, image_size: int) -> None:
    """Raises ``SpecError`` for a name that is not a module of ``model``, listing the model's stages."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise SpecError(
                f"{type(model).__name__} has no module {name!r}; {stage_listing(model, in_chans, image_size)}"
            )


def used_module_names(model: nn.Module, stage: str) -> set[str]:
    """Names of the modules that computing ``stage``'s output runs (those in the traced graph up to it)."""
    with warnings.catch_warnings():  # torchvision notes when train- and eval-mode graphs differ (timm's swin)
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing", category=UserWarning)
        extractor = create_feature_extractor(model, return_nodes=[stage], tracer_kwargs=tracer_options())
    return {name for name, _ in extractor.named_modules() if name}


def stage_listing(model: nn.Module, in_chans: int, image_size: int) -> str:
    """The stages as "stages: layer1 (64 ch, /4), ..." for error messages (top-level modules if probing fails)."""
    try:
        stages = list_stages(model, in_chans=in_chans, image_size=image_size)
    except SpecError:
        stages = []
    if not stages:
        top_level = [name for name, _ in model.named_children()]
        return f"no stage found by probing; its top-level modules: {top_level}"
    return "stages: " + ", ".join(stage.describe() for stage in stages)


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


def can_stop_at(model: nn.Module, stage: str) -> bool:
    """Whether :func:`forward_until` can stop at ``stage``: a timm stage, or one reached through Sequentials only."""
    info = _feature_info(model)
    if hasattr(model, "forward_intermediates") and info is not None and stage in [entry["module"] for entry in info]:
        return True
    container = model
    for part in stage.split(".")[:-1]:
        container = container.get_submodule(part)
        if not isinstance(container, nn.Sequential):
            return False
    return True


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
