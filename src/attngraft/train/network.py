"""The network a training run trains: a module the user built, or one described as data.

``resnet18`` or ``{name: vit, img_size: 28, patch_size: 4}`` build a zoo model; ``torchvision/resnet18`` or
``timm/resnet18`` a plain backbone; a mapping with ``backbone`` (or a ``.yaml`` path) a grafted model. The number
of classes and input channels come from the data; a graft spec that states other values is an error. A module
(e.g. ``attngraft.graft(torchvision.models.resnet50(), ...)``) trains as it is; :func:`describe_network` gives the
description that rebuilds it, when there is one, so that its checkpoints reload without the module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from attngraft.errors import AttngraftError, ConfigError, SavedModelError
from attngraft.grafting import build, load_spec
from attngraft.grafting.backbone import create_backbone
from attngraft.grafting.spec import check_spec
from attngraft.models import create_model
from attngraft.saving import describe
from attngraft.validation import show

NetworkConfig = str | Mapping[str, Any]
# What ImageClassifier takes: a description, a spec file path, or the module itself.
NetworkArgument = Mapping[str, Any] | str | Path | nn.Module
SPEC_SUFFIXES = (".yaml", ".yml")


def build_network(
    network: NetworkConfig | Path, *, num_classes: int, in_chans: int, backbone_weights: str | None = None
) -> nn.Module:
    """Builds the network ``network`` describes for ``num_classes`` outputs and ``in_chans`` input channels.

    Args:
        network: Zoo name, ``torchvision/<name>``/``timm/<name>``, a zoo mapping with ``name`` and model options,
            a graft spec mapping (with ``backbone``), or the path of a YAML graft spec.
        num_classes: Outputs the data needs.
        in_chans: Channels of the data's images.
        backbone_weights: Replaces a graft spec's ``weights`` (e.g. a checkpoint of an earlier run).

    Raises:
        ConfigError: For a mapping that is neither form, options on a non-spec network, or a spec whose
            ``num_classes``/``in_chans`` disagree with the data.
    """
    if isinstance(network, Path):
        network = str(network)
    if isinstance(network, str) and network.endswith(SPEC_SUFFIXES):
        return _build_spec(load_spec(network), num_classes, in_chans, backbone_weights, source=network)
    if backbone_weights is not None and not (isinstance(network, Mapping) and "backbone" in network):
        raise ConfigError("model.backbone_weights applies only to a graft spec (a network with 'backbone')")
    if isinstance(network, str):
        if "/" in network:
            return create_backbone(network, num_classes=num_classes, in_chans=in_chans)
        return create_model(network, num_classes=num_classes, in_chans=in_chans)
    if not isinstance(network, Mapping):
        raise ConfigError(f"model.network must be a name, a mapping or a spec path, got {type(network).__name__}")
    if "backbone" in network:
        return _build_spec(check_spec(network), num_classes, in_chans, backbone_weights, source="model.network")
    if not isinstance(network.get("name"), str):
        raise ConfigError("a model.network mapping needs 'name' (a zoo model) or 'backbone' (a graft spec)")
    options = {key: value for key, value in network.items() if key != "name"}
    try:
        return create_model(network["name"], num_classes=num_classes, in_chans=in_chans, **options)
    except AttngraftError:
        raise
    except (TypeError, ValueError, RuntimeError) as error:  # an option the model cannot take (num_heads 5 of 64)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"model.network options for {network['name']} {show(options)}: {reason}") from None


def _build_spec(
    spec: dict[str, Any], num_classes: int, in_chans: int, backbone_weights: str | None, *, source: str
) -> nn.Module:
    for key, wanted in (("num_classes", num_classes), ("in_chans", in_chans)):
        stated = spec.get(key)
        if stated is not None and stated != wanted:
            raise ConfigError(f"{source}: the graft spec says {key}: {stated} but the data gives {wanted}")
        spec[key] = wanted
    if backbone_weights is not None:
        if not Path(backbone_weights).is_file():
            raise ConfigError(f"model.backbone_weights: no file at {backbone_weights}")
        spec["weights"] = backbone_weights
    return build(spec)


def describe_network(network: nn.Module) -> NetworkConfig | None:
    """The description that rebuilds ``network`` with :func:`build_network`, or None when there is none.

    A model grafted by :func:`attngraft.build` keeps its spec; a zoo model made by :func:`attngraft.create_model`
    its name and options (as :func:`attngraft.save` writes them). A module built by other code, even one grafted
    with :func:`attngraft.graft`, has no description: only the same module can take its weights.
    """
    try:
        saved = describe(network)
    except SavedModelError:
        return None
    config = dict(saved["config"])
    if saved["kind"] == "zoo":  # the classes and channels are the classifier's own hyperparameters
        config = {key: value for key, value in config.items() if key not in ("num_classes", "in_chans")}
    return _plain(config)


def _plain(value: Any) -> Any:
    """Lists, dicts and scalars only (paths as strings), so the description saves as YAML and in checkpoints."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def starts_from_imagenet(network: object) -> bool:
    """Whether a network description's backbone gets ImageNet weights (a graft spec, inline or a YAML file)."""
    if isinstance(network, Path):
        network = str(network)
    if isinstance(network, str) and network.endswith(SPEC_SUFFIXES):
        try:
            network = load_spec(network)
        except AttngraftError:
            return False  # building the network reports the file's problem
    return isinstance(network, Mapping) and network.get("weights") == "imagenet"
