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
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from attngraft.errors import SpecError
from attngraft.grafting.backbone import (
    check_modules,
    classifier_name,
    create_backbone,
    default_image_size,
    evaluating,
    first_conv_name,
    probe_features,
    probe_sample,
    split_name,
    times_called,
)
from attngraft.grafting.freeze import apply_freeze
from attngraft.grafting.head import attach_head
from attngraft.grafting.insert import insert_block
from attngraft.grafting.model import GraftedModel
from attngraft.grafting.replace import replace_convolutions
from attngraft.grafting.weights import imagenet_weights, load_weights, read_state_dict
from attngraft.recipes import find_recipe

SPEC_KEYS = ("backbone", "weights", "in_chans", "num_classes", "image_size", "download", "graft", "freeze")
# Keys each mode needs; everything else in an entry goes to the block (or, for head, to the ViT head).
MODE_KEYS = {"head": ("block", "stage"), "insert": ("block", "after"), "replace": ("stages",)}


def load_spec(path: str | Path) -> dict[str, Any]:
    """Reads a YAML spec and checks it (see :func:`check_spec`); errors name the file.

    A relative path that does not exist may name a packaged spec (``configs/grafts/<name>.yaml``, see
    :func:`attngraft.recipes.find_recipe`).
    """
    path = find_recipe(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SpecError(f"cannot read graft spec {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"graft spec {path} is not a text (YAML) file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"graft spec {path} is not valid YAML: {getattr(error, 'problem', error)}{where}") from None
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
    """Validates the ``graft`` list: each entry a mapping with a known ``mode`` and that mode's keys."""
    if not isinstance(grafts, Sequence) or isinstance(grafts, str):
        raise SpecError(f"graft must be a list of graft entries, got {type(grafts).__name__}")
    checked = []
    for index, entry in enumerate(grafts):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("mode"), str) or entry["mode"] not in MODE_KEYS:
            raise SpecError(f"graft[{index}] must be a mapping with mode one of {list(MODE_KEYS)}, got {entry!r}")
        missing = [key for key in MODE_KEYS[entry["mode"]] if key not in entry]
        if missing:
            raise SpecError(f"graft[{index}] ({entry['mode']}) is missing {missing}")
        checked.append(dict(entry))
    if sum(entry["mode"] == "head" for entry in checked) > 1:
        raise SpecError("a model takes at most one head graft")
    return checked


def build(spec: Mapping[str, Any] | str | Path) -> GraftedModel:
    """Builds backbone, weights, grafts and freezing from a spec dict or a YAML file path.

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
    model.spec = checked
    classifier = classifier_name(backbone)
    if classifier_is_new and classifier is not None:
        model.new_modules.append(classifier)
    return apply_grafts(model, checked["graft"], freeze=checked["freeze"], num_classes=checked["num_classes"])


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
    out_features = getattr(model.backbone.get_submodule(classifier), "out_features", None) if classifier else None
    if not isinstance(out_features, int):
        raise SpecError(f"set num_classes: {model.name} has no linear classifier to take it from")
    return out_features


def graft(
    model: nn.Module,
    graft: Sequence[Mapping[str, Any]] = (),
    *,
    freeze: str = "backbone",
    num_classes: int | None = None,
    in_chans: int | None = None,
    image_size: int = 224,
) -> GraftedModel:
    """Grafts onto a model the user already has (e.g. ``torchvision.models.resnet18(weights=...)``).

    Args:
        model: The backbone; kept as ``GraftedModel.backbone`` (not copied).
        graft: Graft entries, as in a spec's ``graft`` list.
        freeze: "backbone", "none" or "stages:<names>".
        num_classes: Outputs of a head graft; default: the model's classifier's.
        in_chans: Input channels; default: the first convolution's.
        image_size: Input side used to probe the feature maps (and to size a head's positions).

    Raises:
        SpecError: For a graft that does not fit the model.
    """
    if in_chans is None:
        in_chans = getattr(model.get_submodule(first_conv_name(model)), "in_channels", 3)
    grafted = GraftedModel(
        model, name=type(model).__name__, weights="as given", in_chans=int(in_chans), image_size=image_size
    )
    return apply_grafts(grafted, check_grafts(list(graft)), freeze=freeze, num_classes=num_classes)


def apply_grafts(
    model: GraftedModel, grafts: list[dict[str, Any]], *, freeze: str, num_classes: int | None
) -> GraftedModel:
    """Replacements first (they keep shapes), then one probe of every map the head and inserts see, then those."""
    for entry in (entry for entry in grafts if entry["mode"] == "replace"):
        options = _options(entry, "replace")
        for stage in _as_list(entry["stages"]):
            check_modules(model.backbone, [stage], in_chans=model.in_chans, image_size=model.image_size)
            replace_convolutions(model, str(entry.get("block", "local")), stage, **options)
    sample = probe_sample(model.backbone, in_chans=model.in_chans, image_size=model.image_size)
    locations = [location for entry in grafts if entry["mode"] != "replace" for location in _locations(entry)]
    maps = probe_features(model.backbone, locations, sample) if locations else {}
    calls = times_called(model.backbone, locations) if locations else {}  # traced before any insert hook exists
    for entry in (entry for entry in grafts if entry["mode"] == "head"):
        stage, classes = str(entry["stage"]), num_classes or _classifier_outputs(model)
        attach_head(
            model, str(entry["block"]), stage, maps[stage], sample, num_classes=classes, **_options(entry, "head")
        )
    for entry in (entry for entry in grafts if entry["mode"] == "insert"):
        for location in _as_list(entry["after"]):
            _require_kept(model, location)
            options = _options(entry, "insert")
            insert_block(model, str(entry["block"]), location, maps[location], calls=calls[location], **options)
    for record in (record for record in model.records if record.mode == "replace"):
        for name in record.modules:
            _require_kept(model, name.removeprefix("backbone."))
    apply_freeze(model, freeze)
    _check_runs(model, sample)
    return model


def _check_runs(model: GraftedModel, sample: torch.Tensor) -> None:
    """One forward of the grafted model on the probe input, so a misfit shows now rather than in training."""
    try:
        with evaluating(model):
            model(sample)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(
            f"the grafted {model.name} fails on a {tuple(sample.shape)} input (image_size {model.image_size}): "
            f"{first_line}"
        ) from None


def _options(entry: Mapping[str, Any], mode: str) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in ("mode", "block", *MODE_KEYS[mode])}


def _as_list(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list | tuple) else [str(value)]


def _locations(entry: Mapping[str, Any]) -> list[str]:
    return [str(entry["stage"])] if entry["mode"] == "head" else _as_list(entry["after"])


def _require_kept(model: GraftedModel, name: str) -> None:
    """A graft on a module that the head's truncated forward does not run would never run."""
    if model.head_stage is not None and name not in model.head_modules:
        raise SpecError(f"{name} comes after the head's stage {model.head_stage}, so it would never run")
