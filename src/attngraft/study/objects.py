"""Objects named in study files: ``{class_path, init_args}`` entries, built only from classes of the expected kind.

A study file is data, not code. Its entries may name only classes of the kind their key takes: augmentations
(``torch.nn.Module`` subclasses from torchvision's transforms, timm's data package or attngraft) and callbacks
(Lightning ``Callback`` subclasses from Lightning's callbacks or attngraft), never a function such as ``os.system``
and never a module outside those packages (importing a module runs its code). The package is checked before
anything is imported, the kind after importing and before anything is called.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from attngraft.errors import ConfigError

ENTRY_KEYS = ("class_path", "init_args")


@dataclass(frozen=True)
class Kind:
    """What a key of a study file may name.

    Attributes:
        noun: What the objects are called in errors (``augmentation``).
        base: The class every named class must subclass.
        packages: The packages (and their sub-packages) a named class may come from.
    """

    noun: str
    base: type
    packages: tuple[str, ...]

    def allows_module(self, module: str) -> bool:
        """Whether ``module`` is one of :attr:`packages` or inside one."""
        return any(module == package or module.startswith(f"{package}.") for package in self.packages)

    def describe(self) -> str:
        """The allowed classes, in words."""
        return f"{self.base.__module__}.{self.base.__qualname__} subclasses from {', '.join(self.packages)}"


AUGMENTATION = Kind("augmentation", torch.nn.Module, ("torchvision.transforms", "timm.data", "attngraft"))
CALLBACK = Kind("callback", L.Callback, ("lightning.pytorch.callbacks", "attngraft"))


def build_object(entry: object, where: str, kind: Kind) -> Any:
    """Builds ``{class_path: package.module.Class, init_args: {...}}`` (as in LightningCLI configs) of ``kind``.

    Raises:
        ConfigError: Naming ``where``, for an entry that is not such a mapping, a class outside the kind's packages
            or not of its base class (nothing of it is imported or called), or arguments the class refuses.
    """
    if not isinstance(entry, Mapping) or not isinstance(entry.get("class_path"), str):
        raise ConfigError(f"{where}: expected {{class_path: ..., init_args: {{...}}}}, got {entry!r}")
    unknown = sorted(str(key) for key in entry if key not in ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; an entry has {' and '.join(ENTRY_KEYS)}")
    class_path = entry["class_path"]
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name or not kind.allows_module(module_name):
        raise ConfigError(f"{where}.class_path: {class_path!r} is not allowed: {kind.noun}s are {kind.describe()}")
    try:
        factory = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError as error:
        raise ConfigError(f"{where}.class_path: cannot import {module_name!r} ({error})") from None
    if not (isinstance(factory, type) and issubclass(factory, kind.base)):
        raise ConfigError(f"{where}.class_path: {class_path!r} is not allowed: {kind.noun}s are {kind.describe()}")
    init_args = entry.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigError(f"{where}.init_args: expected a mapping of argument names to values, got {init_args!r}")
    try:
        return factory(**init_args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: cannot build {class_path}: {error}") from None


def build_objects(entries: object, where: str, kind: Kind) -> list[Any]:
    """Builds a list of entries (None or absent: none)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of {{class_path, init_args}}, got {entries!r}")
    return [build_object(entry, f"{where}[{index}]", kind) for index, entry in enumerate(entries)]
