"""A model saved as one directory: what rebuilds it (YAML) and its weights (safetensors), loadable offline.

``save(model, directory)`` writes::

    directory/
      model.yaml          # {format: 1, attngraft: <version>, kind: zoo|graft, config: <zoo config or graft spec>}
      model.safetensors   # model.state_dict()

``load(directory)`` rebuilds the architecture from ``model.yaml`` — ``create_model(**config)`` for a zoo model,
``grafting.build(spec)`` for a grafted one, with the spec's backbone weights switched off (the saved weights
replace them) — then loads the weights with every key checked. Nothing is unpickled and nothing is downloaded.

Only models attngraft can rebuild are saved: those of :func:`attngraft.models.create_model` (their
``zoo_config``) and of :func:`attngraft.grafting.build` (their ``spec``). A model grafted onto a module of one's
own (:func:`attngraft.grafting.graft`) is refused: save its weights with :func:`attngraft.grafting.save_weights`.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from torch import nn

from attngraft import __version__
from attngraft._io import _umask
from attngraft.errors import SavedModelError, WeightsError
from attngraft.grafting import build
from attngraft.models import create_model
from attngraft.models.factory import ZOO_CONFIG
from attngraft.validation import read_yaml

FORMAT = 1
CONFIG_FILE = "model.yaml"
WEIGHTS_FILE = "model.safetensors"
KINDS = ("zoo", "graft")


def describe(model: nn.Module) -> dict[str, Any]:
    """The ``model.yaml`` content that rebuilds ``model``'s architecture.

    Raises:
        SavedModelError: For a model attngraft did not build (no ``spec`` or ``zoo_config``), or a description
            that is not plain YAML data.
    """
    spec = getattr(model, "spec", None)
    zoo_config = getattr(model, ZOO_CONFIG, None)
    if isinstance(spec, Mapping):
        kind, config = "graft", copy.deepcopy(dict(spec))
    elif isinstance(zoo_config, Mapping):
        kind, config = "zoo", copy.deepcopy(dict(zoo_config))
    elif hasattr(model, "records"):  # a GraftedModel of graft(): grafted onto the user's own module
        raise SavedModelError(
            f"this model was grafted onto a {getattr(model, 'name', 'module')} that attngraft cannot rebuild "
            "(it was not made by attngraft.grafting.build): save its weights with "
            "attngraft.grafting.save_weights(model, 'weights.safetensors') and rebuild it yourself"
        )
    else:
        raise SavedModelError(
            f"attngraft.save takes models that attngraft can rebuild (attngraft.create_model or attngraft.build), "
            f"not a {type(model).__name__}: save its weights with attngraft.grafting.save_weights and rebuild it "
            "yourself"
        )
    description = {"format": FORMAT, "attngraft": __version__, "kind": kind, "config": config}
    try:
        yaml.safe_dump(description)
    except yaml.YAMLError as error:
        raise SavedModelError(f"the model's {kind} config is not plain YAML data ({error}): {config!r}") from None
    return description


def save(model: nn.Module, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Writes ``model`` to ``directory`` (``model.yaml`` + ``model.safetensors``), atomically.

    The directory is written beside its destination under a temporary name and renamed into place, so a reader
    never sees half of it.

    Args:
        model: A model of :func:`attngraft.models.create_model` or :func:`attngraft.grafting.build`.
        directory: The directory to write; it must not exist or be empty, unless ``overwrite``.
        overwrite: Replace an existing, non-empty directory.

    Returns:
        ``directory``.

    Raises:
        SavedModelError: For a model attngraft cannot rebuild, or a destination that is a file or a non-empty
            directory (without ``overwrite``).
    """
    directory = Path(directory)
    description = describe(model)
    _check_destination(directory, overwrite)
    state = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in model.state_dict().items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(description, sort_keys=False))
        safetensors.torch.save_file(state, staging / WEIGHTS_FILE, metadata={"format": f"attngraft-{FORMAT}"})
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the directory a plain mkdir's mode
        _move_into_place(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _check_destination(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise SavedModelError(f"cannot save a model to {directory}: it is a file")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise SavedModelError(f"{directory} exists and is not empty: pass overwrite=True to replace it")


def _move_into_place(staging: Path, directory: Path) -> None:
    """Renames ``staging`` to ``directory``; an existing directory is first moved aside, then deleted."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
    os.replace(directory, aside / directory.name)
    os.replace(staging, directory)
    shutil.rmtree(aside, ignore_errors=True)


def load(directory: str | Path) -> nn.Module:
    """Rebuilds the model :func:`save` wrote to ``directory``, with its weights, in eval mode on the CPU.

    A grafted model comes back with its grafts, hooks and frozen parameters as ``build`` makes them; its spec's
    backbone weights are not read (the saved weights replace them), so loading needs neither the original file
    nor the network.

    Raises:
        SavedModelError: For a missing directory or file, or a ``model.yaml`` that is not attngraft's format.
        WeightsError: For weights that are not a valid safetensors file, or keys that are missing, unexpected or
            of another shape (all listed).
    """
    directory = Path(directory)
    description = read_description(directory)
    config = description["config"]
    where = directory / CONFIG_FILE
    try:
        if description["kind"] == "graft":
            model: nn.Module = build({**config, "weights": None, "download": False})
        else:
            options = {key: value for key, value in config.items() if key != "name"}
            model = create_model(str(config.get("name")), **options)
    except TypeError as error:
        raise SavedModelError(f"{where}: cannot rebuild the model: {error}") from None
    load_checked(model, _read_weights(directory / WEIGHTS_FILE), source=str(directory / WEIGHTS_FILE))
    return model.eval()


def read_description(directory: Path) -> dict[str, Any]:
    """The checked content of ``directory/model.yaml``.

    Raises:
        SavedModelError: For a missing directory or file, invalid YAML, or missing or unknown entries.
    """
    where = directory / CONFIG_FILE
    if not directory.is_dir():
        raise SavedModelError(f"no saved model at {directory}: not a directory")
    if not where.exists():
        raise SavedModelError(f"no saved model at {directory}: no {CONFIG_FILE}")
    content = read_yaml(where, "saved model file", error=SavedModelError)
    if not isinstance(content, Mapping):
        raise SavedModelError(f"{where}: expected a mapping with format, kind and config")
    if content.get("format") != FORMAT:
        raise SavedModelError(f"{where}: format {content.get('format')!r}; this attngraft reads format {FORMAT}")
    if content.get("kind") not in KINDS:
        raise SavedModelError(f"{where}: kind must be one of {list(KINDS)}, got {content.get('kind')!r}")
    if not isinstance(content.get("config"), Mapping):
        raise SavedModelError(f"{where}: config must be a mapping, got {content.get('config')!r}")
    return dict(content)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SavedModelError(f"no saved model at {path.parent}: {WEIGHTS_FILE} is missing")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError and OSError subclasses
        raise WeightsError(f"{path} is not a valid safetensors file: {error}") from None


def load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copies ``state`` into ``model`` after checking that its keys and shapes are exactly the model's.

    Raises:
        WeightsError: Listing every missing, unexpected and mis-shaped key.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: {tuple(state[key].shape)} saved, {tuple(expected[key].shape)} in the model"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = [
        f"{title} ({len(keys)}): {', '.join(keys)}"
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise WeightsError(f"weights {source} do not fit the rebuilt model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
