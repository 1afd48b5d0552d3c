"""A graft described as data — the same dict in Python, YAML and the CLI — and the two entry points.

``build(spec)`` makes the backbone, loads its weights and applies grafts and freezing; ``graft(model, ...)`` does
the last two to a module the user already has. The spec format::

    backbone: torchvision/resnet18      # or timm/<name>, or attngraft/<name>
    weights: null                       # null | imagenet | path/to/file.safetensors|.pt
    in_chans: 1
    num_classes: 10
    image_size: 224                     # optional; the backbone's default input side
    download: false                     # optional; allow downloading imagenet weights
    graft:
      - {mode: head, block: graph, stage: layer4, patch_size: 1, depth: 1, num_heads: 4}
      - {mode: insert, block: non_local, after: layer3}
      - {mode: replace, block: local, stages: [layer4], kernel_size: 7, num_heads: 8}
    freeze: backbone                    # backbone | none | stages:<list>

In Python the ``graft`` entries may also be values: ``Head("graph", stage="layer4", num_heads=4)``,
``Insert("non_local", after="layer3")``, ``Replace("local", stages=["layer4"], kernel_size=7, num_heads=8)``
(see :mod:`attngraft.grafting.grafts`).
"""

from __future__ import annotations

import copy
import difflib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attngraft.errors import SpecError
from attngraft.grafting.backbone import (
    can_stop_at,
    check_modules,
    check_tensor,
    classifier_name,
    create_backbone,
    default_image_size,
    evaluating,
    first_conv_name,
    list_stages,
    output_layouts,
    probe_outputs,
    probe_sample,
    split_name,
    stage_listing,
)
from attngraft.grafting.classifier import classifier_outputs, disable_auxiliary_heads, reset_classifier
from attngraft.grafting.freeze import apply_freeze
from attngraft.grafting.grafts import Graft, Head, Insert, Replace, as_grafts
from attngraft.grafting.head import attach_head
from attngraft.grafting.insert import insert_block
from attngraft.grafting.model import GraftedModel
from attngraft.grafting.replace import replace_convolutions
from attngraft.grafting.weights import imagenet_weights, load_weights, read_state_dict
from attngraft.recipes import find_recipe
from attngraft.validation import read_yaml

logger = logging.getLogger(__name__)

SPEC_KEYS = ("backbone", "weights", "in_chans", "num_classes", "image_size", "download", "graft", "freeze")


def load_spec(path: str | Path) -> dict[str, Any]:
    """Reads a YAML spec and checks it (see :func:`check_spec`); errors name the file.

    A relative path that does not exist may name a packaged spec (``configs/grafts/<name>.yaml``, see
    :func:`attngraft.recipes.find_recipe`).
    """
    path = find_recipe(path)
    content = read_yaml(path, "graft spec", error=SpecError)
    try:
        return check_spec(content)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def check_spec(spec: object) -> dict[str, Any]:
    """Validates a spec and returns a copy with defaults filled in.

    Raises:
        SpecError: For a non-mapping, unknown or missing keys, wrong types, or a malformed graft entry.
    """
    if not isinstance(spec, Mapping):
        raise SpecError(f"a graft spec is a mapping with keys {list(SPEC_KEYS)}, got {type(spec).__name__}")
    _reject_unknown("spec key", spec, SPEC_KEYS)
    if not isinstance(spec.get("backbone"), str):
        raise SpecError("the spec needs 'backbone': '<source>/<model>', e.g. 'torchvision/resnet18'")
    split_name(spec["backbone"])
    weights = spec.get("weights")
    if weights is not None and not isinstance(weights, str | Path):
        raise SpecError(f"weights must be null, 'imagenet' or a file path, got {weights!r}")
    checked = {
        "backbone": spec["backbone"],
        "weights": None if weights is None else str(weights),
        "in_chans": _positive_int(spec, "in_chans", None),  # None: 3, unless a caller (training) knows better
        "num_classes": _positive_int(spec, "num_classes", None),
        "image_size": _positive_int(spec, "image_size", None),
        "download": _boolean(spec, "download"),
        "freeze": str(spec.get("freeze", "backbone")),
        "graft": check_grafts(spec.get("graft") or []),
    }
    return checked


def _positive_int(spec: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{key} must be a positive integer, got {value!r}")
    return value


def _boolean(spec: Mapping[str, Any], key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise SpecError(f"{key} must be true or false, got {value!r}")
    return value


def _reject_unknown(what: str, mapping: Mapping[Any, Any], valid: Sequence[str]) -> None:
    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"unknown {what} {key!r}{hint}; valid: {list(valid)}")


def check_grafts(grafts: object) -> list[dict[str, Any]]:
    """Validates the ``graft`` list (dict entries or ``Head``/``Insert``/``Replace`` values); returns dict forms.

    Raises:
        SpecError: For a non-list, a malformed entry (naming its index), or more than one head.
    """
    return [graft.to_dict() for graft in as_grafts(grafts)]


def build(spec: Mapping[str, Any] | str | Path) -> GraftedModel:
    """Builds backbone, weights, grafts and freezing from a spec dict or a YAML file path.

    The model's ``spec`` is the checked spec with everything resolved (input channels, image size, a head's
    stage), so ``build(model.spec)`` makes the same model again.

    Raises:
        SpecError: For an invalid spec or a graft that does not fit the backbone.
        WeightsError, WeightsNotFoundError: For weights that cannot be found or loaded.
        UnknownNameError: For an unknown backbone or block.
    """
    checked = load_spec(spec) if isinstance(spec, str | Path) else check_spec(spec)
    name, in_chans = checked["backbone"], checked["in_chans"] or 3
    backbone = create_backbone(name, num_classes=checked["num_classes"], in_chans=in_chans)
    notes, classifier_is_new = _load_backbone_weights(backbone, name, checked["weights"], checked["download"])
    image_size = checked["image_size"] or default_image_size(name)
    model = GraftedModel(
        backbone, name=name, weights=checked["weights"] or "random", in_chans=in_chans, image_size=image_size
    )
    model.notes.extend(notes)
    classifier = classifier_name(backbone)
    if classifier_is_new and classifier is not None:
        model.new_modules.append(classifier)
    apply_grafts(model, as_grafts(checked["graft"]), freeze=checked["freeze"], num_classes=checked["num_classes"])
    resolved = {**checked, "in_chans": in_chans, "image_size": image_size, "graft": model.graft_entries}
    model.spec = copy.deepcopy(resolved)
    return model


def _load_backbone_weights(
    backbone: nn.Module, name: str, weights: str | None, download: bool
) -> tuple[list[str], bool]:
    """Loads ``weights`` (None: keep random); returns summary notes and whether the classifier is untrained."""
    if weights is None:
        return ["backbone weights: random (weights: null)"], True
    source, architecture = split_name(name)
    path = imagenet_weights(source, architecture, download=download) if weights == "imagenet" else Path(weights)
    report = load_weights(
        backbone,
        read_state_dict(path),
        source=str(path),
        stem=first_conv_name(backbone),
        classifier=classifier_name(backbone),
    )
    return [f"backbone weights: {path}", *report.notes], bool(report.reset_keys)


def _classifier_outputs(model: GraftedModel) -> int:
    """The class count of the backbone's classifier, for a head when num_classes is not given."""
    classifier = classifier_name(model.backbone)
    outputs = classifier_outputs(model.backbone.get_submodule(classifier)) if classifier else None
    if outputs is None:
        raise SpecError(f"set num_classes: {model.name} has no classifier to take the class count from")
    return outputs


GraftArgument = Graft | Mapping[str, Any] | Sequence[Graft | Mapping[str, Any]]


def graft(
    model: nn.Module,
    *grafts: GraftArgument,
    num_classes: int | None = None,
    freeze: str = "backbone",
    in_chans: int | None = None,
    image_size: int = 224,
    graft: Sequence[Graft | Mapping[str, Any]] | None = None,
) -> GraftedModel:
    """Grafts onto a model the user already has (e.g. ``torchvision.models.resnet18(weights=...)``).

    Example:
        >>> grafted = graft(resnet, Head("graph", stage="layer4", num_heads=4), num_classes=10)  # doctest: +SKIP

    Args:
        model: The backbone; kept as ``GraftedModel.backbone`` (not copied).
        *grafts: ``Head``/``Insert``/``Replace`` values or their dict forms; a list of them is flattened (the older
            ``graft(model, [{...}])``).
        num_classes: Outputs of the grafted model: a head's classes, or else a fresh classifier (trained) when the
            model's has another count. Default: the model's classifier's.
        freeze: "backbone", "none" or "stages:<names>".
        in_chans: Input channels; default: the first convolution's.
        image_size: Input side used to probe the feature maps (and to size a head's positions).
        graft: The older keyword form of ``*grafts`` (a list of entries).

    Raises:
        SpecError: For a graft that does not fit the model, or ``num_classes`` for a model without a classifier.
        TypeError: For grafts given both positionally and as ``graft=``.
    """
    entries = _flatten(grafts)
    if graft is not None:
        if entries:
            raise TypeError(
                "graft(): pass the grafts positionally, graft(model, Head(...), Insert(...)), not also graft="
            )
        entries = _flatten((graft,))
    if in_chans is None:
        in_chans = getattr(model.get_submodule(first_conv_name(model)), "in_channels", 3)
    grafted = GraftedModel(
        model, name=type(model).__name__, weights="as given", in_chans=int(in_chans), image_size=image_size
    )
    return apply_grafts(grafted, as_grafts(entries), freeze=freeze, num_classes=num_classes)


def _flatten(arguments: Sequence[object]) -> list[object]:
    """The graft entries of ``graft``'s positional arguments, lists and tuples flattened one level."""
    entries: list[object] = []
    for argument in arguments:
        entries.extend(argument if isinstance(argument, list | tuple) else [argument])
    return entries


def apply_grafts(model: GraftedModel, grafts: Sequence[Graft], *, freeze: str, num_classes: int | None) -> GraftedModel:
    """Applies ``grafts`` to ``model``, then freezing; checks the result with one forward.

    Auxiliary classifiers go off first; replacements next (they keep shapes); then one probe of every map the head
    and the inserts see, then those. Without a head, ``num_classes`` re-initialises the classifier if it differs.
    ``model.graft_entries`` gets the grafts' dict forms (a head's chosen stage filled in).
    """
    disable_auxiliary_heads(model)
    for replacement in (graft for graft in grafts if isinstance(graft, Replace)):
        for stage in replacement.stages:
            check_modules(model.backbone, [stage], in_chans=model.in_chans, image_size=model.image_size)
            replace_convolutions(model, replacement.block, stage, **replacement.options)
    head = next((graft for graft in grafts if isinstance(graft, Head)), None)
    head_stage = None if head is None else head.stage or default_head_stage(model)
    inserts = [graft for graft in grafts if isinstance(graft, Insert)]
    locations = list(dict.fromkeys([*([head_stage] if head_stage else []), *(n for i in inserts for n in i.locations)]))
    sample = probe_sample(model.backbone, in_chans=model.in_chans, image_size=model.image_size)
    outputs, calls = probe_outputs(model.backbone, locations, sample) if locations else ({}, {})
    maps = {location: check_tensor(model.backbone, location, outputs) for location in locations}
    channels_last = _channels_last(model, maps, sample)
    if head is not None and head_stage is not None:
        classes = num_classes or _classifier_outputs(model)
        attach_head(
            model,
            head,
            head_stage,
            maps[head_stage],
            sample,
            num_classes=classes,
            channels_last=channels_last[head_stage],
        )
    elif num_classes is not None:
        reset_classifier(model, num_classes)
    for insert in inserts:
        for location in insert.locations:
            _require_kept(model, location)
            insert_block(
                model,
                insert.block,
                location,
                maps[location],
                calls=calls[location],
                channels_last=channels_last[location],
                **insert.options,
            )
    for record in (record for record in model.records if record.mode == "replace"):
        for name in record.modules:
            _require_kept(model, name.removeprefix("backbone."))
    model.graft_entries = [{**graft.to_dict(), **({"stage": head_stage} if graft is head else {})} for graft in grafts]
    apply_freeze(model, freeze)
    _check_runs(model, sample, num_classes)
    return model


def default_head_stage(model: GraftedModel) -> str:
    """The stage a head without ``stage`` reads: the last whose map is at least 2×2 at the probe size.

    The choice goes into the notes and the log.

    Raises:
        SpecError: For a backbone where no stage can be found.
    """
    stages = list_stages(model.backbone, in_chans=model.in_chans, image_size=model.image_size)
    known = [
        stage
        for stage in stages
        if stage.layout is not None and stage.size is not None and can_stop_at(model.backbone, stage.name)
    ]
    if not known:
        raise SpecError(
            f"head: no stage of {model.name} where a head can stop its forward was found by probing; set the "
            f"head's stage ({stage_listing(model.backbone, model.in_chans, model.image_size)})"
        )
    large = [stage for stage in known if min(stage.size or (0, 0)) >= 2]
    chosen = (large or known)[-1]
    note = (
        f"head stage: {chosen.describe()}, the last stage whose map is at least 2×2 at image_size "
        f"{model.image_size} (the head graft names no stage)"
    )
    if not large:
        note = f"head stage: {chosen.describe()}; every stage's map is 1×1 at image_size {model.image_size}"
    model.notes.append(note)
    logger.info(note)
    return chosen.name


def _channels_last(model: GraftedModel, maps: dict[str, torch.Tensor], sample: torch.Tensor) -> dict[str, bool]:
    """Whether each location's map is (B, H, W, C); refuses 4-D maps whose layout the probes cannot tell."""
    layouts = output_layouts(model.backbone, maps, sample)
    for location, layout in layouts.items():
        if layout is None:
            raise SpecError(
                f"cannot tell whether {location}'s output {tuple(maps[location].shape)} is (B, C, H, W) or "
                f"(B, H, W, C) at image_size {model.image_size}; set another image_size"
            )
    return {location: layouts.get(location) == "NHWC" for location in maps}


def _check_runs(model: GraftedModel, sample: torch.Tensor, num_classes: int | None) -> None:
    """One forward of the grafted model on the probe input, so a misfit shows now rather than in training.

    The output must be (1, classes) logits, with ``num_classes`` classes when given.
    """
    try:
        with evaluating(model):
            output = model(sample)
    except (RuntimeError, ValueError, TypeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(
            f"the grafted {model.name} fails on a {tuple(sample.shape)} input (image_size {model.image_size}): "
            f"{first_line}"
        ) from None
    classes = num_classes or (output.shape[-1] if output.ndim == 2 else 0)
    if output.shape != (1, classes):
        expected = f"(1, {num_classes})" if num_classes else "(1, classes)"
        raise SpecError(
            f"the grafted {model.name} gives {tuple(output.shape)} for a {tuple(sample.shape)} input; expected "
            f"{expected} logits (its classifier, {classifier_name(model.backbone)!r}, may not be its last layer)"
        )


def _require_kept(model: GraftedModel, name: str) -> None:
    """A graft on a module that the head's truncated forward does not run would never run."""
    if model.head_stage is not None and name not in model.head_modules:
        raise SpecError(f"{name} comes after the head's stage {model.head_stage}, so it would never run")
