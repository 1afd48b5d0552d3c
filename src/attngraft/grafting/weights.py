"""Weights: safe reading and atomic writing of files, ImageNet weights from local caches, loading with checks.

Files are read without running pickled code: ``.safetensors`` through safetensors, ``.pt/.pth/.bin/.ckpt`` through
``torch.load(weights_only=True)``. ``imagenet`` weights are looked up in torch hub's and Hugging Face's caches and
are downloaded only when asked (``download=True``), so nothing ever waits on the network by default.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from timm.models import adapt_input_conv
from torch import nn

from attngraft._io import atomic_path
from attngraft.errors import WeightsError, WeightsNotFoundError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# Keys under which training frameworks nest the model's weights (Lightning: state_dict; others: model).
_NESTED_KEYS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from ``.safetensors`` or, without unpickling code, from a ``.pt``-style file.

    A Lightning checkpoint's ``state_dict`` (or another framework's ``model``) entry is taken when present.

    Raises:
        WeightsNotFoundError: If the file does not exist.
        WeightsError: For an unknown suffix, a corrupt file, or a pickle that holds more than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix not in SUFFIXES:
        raise WeightsError(f"weights file {path}: unknown format {path.suffix!r}; expected one of {list(SUFFIXES)}")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError and OSError subclasses
            raise WeightsError(f"weights file {path} is not a valid safetensors file: {error}") from None
    return _as_state_dict(load_torch_file(path, "weights file"), path)


def load_torch_file(path: Path, kind: str, *, mmap: bool = False) -> object:
    """``torch.load(weights_only=True)`` of ``path`` on the CPU; nothing in the file runs as code.

    ``mmap=True`` maps the tensors' storage instead of reading it (a quick look at a large checkpoint).

    Raises:
        WeightsError: For pickled objects other than tensors and plain values (refused), or a corrupt file; the
            message names the file as ``kind`` (e.g. "weights file", "checkpoint").
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        message = " ".join(str(error).split())
        blocked = re.search(r"GLOBAL ([\w.]+)", message)
        if blocked is None:  # not a pickle of torch's, or not a pickle at all
            raise WeightsError(f"{kind} {path} is corrupt or not a torch file (it is no torch.save archive)") from None
        raise WeightsError(
            f"{kind} {path}: refused to load it: it holds pickled objects other than tensors ({blocked.group(1)}), "
            "and loading them could run code. Convert it to .safetensors from a trusted environment."
        ) from None
    except RuntimeError as error:
        if mmap and "mmap can only be used" in str(error):  # the legacy (pre-zip) format cannot be mapped
            return load_torch_file(path, kind)
        raise WeightsError(f"{kind} {path} is corrupt or not a torch file: {_first_line(error)}") from None
    except Exception as error:  # any other parse failure (EOFError, IndexError, KeyError...): not a torch file
        raise WeightsError(f"{kind} {path} is corrupt or not a torch file: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _as_state_dict(content: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(content, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()
    ):
        raise WeightsError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(content)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Writes ``model.state_dict()`` to ``.safetensors`` (preferred) or ``.pt``, atomically.

    Raises:
        WeightsError: For another suffix.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise WeightsError(f"cannot save weights as {path.suffix!r}; use one of {list(SUFFIXES)}")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(path) as temporary:
        if path.suffix == ".safetensors":
            safetensors.torch.save_file(state, temporary)
        else:
            torch.save(state, temporary)
    return path


@dataclass
class LoadReport:
    """What loading changed beyond copying tensors: adapted stem, classifier left at its fresh initialisation."""

    source: str
    notes: list[str] = field(default_factory=list)  # human-readable lines for the summary
    reset_keys: list[str] = field(default_factory=list)  # classifier keys left at their fresh initialisation


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, stem: str, classifier: str | None
) -> LoadReport:
    """Copies ``state`` into ``model``, checking every key.

    Two differences are repaired, as timm does when it loads pretrained weights: a stem convolution whose input
    channels differ (filters summed for 1 channel, repeated and rescaled otherwise: ``adapt_input_conv``), and a
    classifier whose class count differs (left at its fresh initialisation, to be trained).

    Args:
        model: The module to fill.
        state: Weights, e.g. from :func:`read_state_dict`.
        source: Where the weights came from, for messages.
        stem: Name of the stem's convolution module.
        classifier: Name of the classifier module, if any.

    Raises:
        WeightsError: Listing missing and unexpected keys, or keys whose shapes do not fit.
    """
    expected = model.state_dict()
    state = _strip_prefix(dict(state), expected)
    report = LoadReport(source)
    adapted: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state.items():
        target = expected.get(key)
        if target is None or target.shape == value.shape:
            adapted[key] = value
        elif key == f"{stem}.weight" and _adaptable(value, target):
            adapted[key] = adapt_input_conv(target.shape[1], value)
            method = "summing" if target.shape[1] == 1 else "repeating and rescaling"
            report.notes.append(
                f"{key} adapted from {value.shape[1]} to {target.shape[1]} input channels "
                f"by {method} the pretrained filters"
            )
        elif classifier is not None and key.startswith(f"{classifier}."):
            report.reset_keys.append(key)
            report.notes.append(
                f"{key} left untrained: {tuple(target.shape)} here, {tuple(value.shape)} in the weights"
            )
        else:
            mismatched.append(f"{key}: {tuple(value.shape)} in the weights, {tuple(target.shape)} in the model")
    missing = sorted(set(expected) - set(adapted) - set(report.reset_keys) - _optional_keys(expected))
    unexpected = sorted(set(adapted) - set(expected))
    if mismatched or missing or unexpected:
        raise WeightsError(_mismatch_message(source, mismatched, missing, unexpected))
    model.load_state_dict(adapted, strict=False)
    for line in report.notes:
        logger.info("%s: %s", source, line)
    return report


def _adaptable(weights: torch.Tensor, target: torch.Tensor) -> bool:
    """A 3-channel (RGB) stem filter bank that differs from the model's only in input channels."""
    same_filters = weights.shape[0] == target.shape[0] and weights.shape[2:] == target.shape[2:]
    return weights.ndim == 4 and weights.shape[1] == 3 and same_filters


def _optional_keys(expected: Mapping[str, torch.Tensor]) -> set[str]:
    """BatchNorm's step counters, absent from many published weights (torchvision's among them)."""
    return {key for key in expected if key.endswith("num_batches_tracked")}


def _strip_prefix(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops a common ``prefix.`` (``model.``, ``backbone.``, ``module.``) when that makes the keys match."""
    if not state or set(state) & set(expected):
        return state
    first = next(iter(state)).split(".")
    for depth in range(1, len(first)):
        prefix = ".".join(first[:depth]) + "."
        if all(key.startswith(prefix) for key in state):
            stripped = {key.removeprefix(prefix): value for key, value in state.items()}
            if set(stripped) & set(expected):
                return stripped
    return state


def _mismatch_message(source: str, mismatched: list[str], missing: list[str], unexpected: list[str]) -> str:
    def listing(title: str, keys: list[str]) -> str:
        shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        return f"{title} ({len(keys)}): {shown}"

    parts = [
        listing(title, keys)
        for title, keys in (
            ("shape mismatches", mismatched),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        )
        if keys
    ]
    return f"weights from {source} do not fit the model. " + "; ".join(parts)


def imagenet_weights(source: str, architecture: str, *, download: bool = False) -> Path:
    """The local file of a model's published ImageNet weights; downloads it only when ``download`` is set.

    Looks in torch hub's cache (``$TORCH_HOME/hub/checkpoints``) for torchvision, and in Hugging Face's and torch
    hub's caches for timm.

    Raises:
        WeightsNotFoundError: When the file is in no cache and ``download`` is off; says where to put it.
        WeightsError: When the model has no published weights.
    """
    if source == "torchvision":
        return _torchvision_weights(architecture, download)
    if source == "timm":
        return _timm_weights(architecture, download)
    raise WeightsError(
        f"{source}/{architecture} has no published ImageNet weights; pass a weights file (.safetensors or .pt) instead"
    )


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _torchvision_weights(architecture: str, download: bool) -> Path:
    import torchvision

    try:
        weights: Any = torchvision.models.get_model_weights(architecture).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(f"torchvision/{architecture} has no published weights") from None
    path = _hub_checkpoint(weights.url)
    if path.is_file():
        return path
    if download:
        torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, weights_only=True)
        return path
    raise WeightsNotFoundError(_not_cached_message(f"torchvision/{architecture}", [path], weights.url))


def _timm_weights(architecture: str, download: bool) -> Path:
    import huggingface_hub
    import timm

    config = timm.models.get_pretrained_cfg(architecture)
    hub_id = config.hf_hub_id if config is not None else None
    url = config.url if config is not None and isinstance(config.url, str) else None
    if not (hub_id or url):
        raise WeightsError(f"timm/{architecture} has no published weights")
    searched: list[Path] = []
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = huggingface_hub.try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return Path(cached)
        searched.append(Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}")
    if url:
        path = _hub_checkpoint(url)
        if path.is_file():
            return path
        searched.append(path)
    if download:
        if hub_id:
            return Path(huggingface_hub.hf_hub_download(hub_id, "model.safetensors"))
        torch.hub.load_state_dict_from_url(str(url), progress=True, weights_only=True)
        return _hub_checkpoint(str(url))
    origin = f"https://huggingface.co/{hub_id}" if hub_id else str(url)
    raise WeightsNotFoundError(_not_cached_message(f"timm/{architecture}", searched, origin))


def _not_cached_message(name: str, searched: list[Path], origin: str) -> str:
    places = " or ".join(str(path) for path in searched)
    return (
        f"ImageNet weights for {name} are not in the local cache (looked in {places}). Put the file from {origin} "
        "there, pass the file's path as the weights, or allow downloading (download=True, or --download)."
    )
