"""Trained networks back from files: a Lightning checkpoint of ``attngraft fit``, or a weights file of a known network.

This is the one place that turns a checkpoint into a network. Checkpoints load with ``torch.load(weights_only=True)``:
nothing in them is unpickled as code. The network is rebuilt from the checkpoint's hyperparameters (its description:
a zoo name, a graft spec, ...) with every weights file it names switched off — backbone and teacher weights, a spec's
``weights`` — because the trained weights come from the checkpoint itself; nothing is read from the network either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from attngraft.errors import ConfigError, WeightsError, WeightsNotFoundError
from attngraft.grafting.spec import load_spec
from attngraft.grafting.weights import load_torch_file, read_state_dict
from attngraft.saving import load_checked
from attngraft.train.module import CHECKPOINT_KEY
from attngraft.train.network import SPEC_SUFFIXES, NetworkConfig, build_network

NETWORK_PREFIX = "network."  # the LightningModule's attribute holding the trained network


@dataclass
class TrainedCheckpoint:
    """What a checkpoint holds: the trained network (eval mode, CPU) and its metadata.

    Attributes:
        network: The network with the checkpoint's weights.
        hyperparameters: The classifier's arguments, as saved (``network``, ``num_classes``, ``in_chans``, ...).
        path: The file read.
        epoch: Epochs finished when it was written.
        global_step: Optimiser steps taken when it was written.
        extra: attngraft's own entry (the trained network's class).
    """

    network: nn.Module
    hyperparameters: dict[str, Any]
    path: Path
    epoch: int | None = None
    global_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path, *, network: nn.Module | None = None) -> TrainedCheckpoint:
    """Reads a checkpoint of ``attngraft fit`` (or of :class:`~attngraft.train.ImageClassifier`) into a network.

    Args:
        path: The ``.ckpt`` file.
        network: The module that was trained, for a checkpoint whose network attngraft cannot rebuild (one built
            by the user's own code); it receives the weights. Default: rebuilt from the saved description.

    Raises:
        WeightsNotFoundError: If the file does not exist.
        WeightsError: If it is not a weights-only checkpoint of an attngraft classifier, or its weights do not fit.
        ConfigError: If its network has no description and no ``network`` is given.
    """
    path = Path(path)
    content = _read(path)
    hyperparameters = dict(content["hyper_parameters"])
    extra = dict(content.get(CHECKPOINT_KEY) or {})
    if network is None:
        network = _rebuild(hyperparameters, extra, path)
    state = {
        key.removeprefix(NETWORK_PREFIX): value
        for key, value in (content.get("state_dict") or {}).items()
        if key.startswith(NETWORK_PREFIX)
    }
    load_checked(network, state, source=f"of checkpoint {path}")
    return TrainedCheckpoint(
        network.eval(), hyperparameters, path, content.get("epoch"), content.get("global_step"), extra
    )


def rebuild_network(
    description: NetworkConfig, *, num_classes: int, in_chans: int, weights: str | Path | None = None
) -> nn.Module:
    """The network ``description`` builds, offline (no weights file it names is read), in eval mode.

    Args:
        description: As :class:`~attngraft.train.ImageClassifier` takes it (zoo name or mapping, graft spec).
        num_classes: Its classes.
        in_chans: Its input channels.
        weights: A weights file (``.safetensors`` or a weights-only torch file) with every weight of the network.

    Raises:
        WeightsError: If ``weights`` does not fit the network exactly.
    """
    network = build_network(offline_description(description), num_classes=num_classes, in_chans=in_chans)
    if weights is not None:
        load_checked(network, read_state_dict(weights), source=f"file {weights}")
    return network.eval()


def offline_description(description: NetworkConfig) -> NetworkConfig:
    """``description`` with a graft spec's ``weights`` (inline or in its YAML file) set to null."""
    if isinstance(description, str) and description.endswith(SPEC_SUFFIXES):
        description = load_spec(description)
    if isinstance(description, Mapping) and "weights" in description:
        description = {**description, "weights": None}
    return description


def check_lightning_checkpoint(path: str | Path, option: str = "--ckpt_path") -> Mapping[str, Any]:
    """Reads a Lightning checkpoint safely, before Lightning does, so that every bad file gets a clear error.

    Args:
        path: The checkpoint file.
        option: How the user named it, for errors.

    Returns:
        Its content, tensors memory-mapped (nothing is read into memory until used).

    Raises:
        WeightsNotFoundError: If nothing is at ``path``.
        WeightsError: For a directory, an unreadable or empty file, a truncated or corrupt one, one holding pickled
            code, or a torch file that is not a Lightning checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsNotFoundError(f"{option} {path}: no such file")
    if path.is_dir():
        raise WeightsError(f"{option} {path}: a directory, not a checkpoint file (e.g. .../checkpoints/last.ckpt)")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{option} {path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise WeightsError(f"{option} {path}: an empty file, not a checkpoint")
    content = load_torch_file(path, option, mmap=True)
    if not isinstance(content, Mapping) or not {"state_dict", "global_step"} <= set(content):
        found = sorted(map(str, content))[:6] if isinstance(content, Mapping) else type(content).__name__
        raise WeightsError(
            f"{option} {path}: not a Lightning checkpoint (no state_dict and global_step; found {found}); "
            "expected a .ckpt written by attngraft fit"
        )
    return content


def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    content = load_torch_file(path, "checkpoint")
    if not isinstance(content, Mapping) or not isinstance(content.get("hyper_parameters"), Mapping):
        raise WeightsError(f"checkpoint {path} has no hyper_parameters: expected a checkpoint of `attngraft fit`")
    return content


def _rebuild(hyperparameters: Mapping[str, Any], extra: Mapping[str, Any], path: Path) -> nn.Module:
    description = hyperparameters.get("network")
    if description is None:
        trained = extra.get("network_type", "a module of the user's own code")
        raise ConfigError(
            f"checkpoint {path}: its network ({trained}) was passed to ImageClassifier as a module that attngraft "
            "cannot rebuild; build the same module and pass it: load_checkpoint(path, network=module)"
        )
    try:
        return rebuild_network(
            description, num_classes=int(hyperparameters["num_classes"]), in_chans=int(hyperparameters["in_chans"])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"checkpoint {path}: its hyperparameters do not describe a network: {error}") from None
