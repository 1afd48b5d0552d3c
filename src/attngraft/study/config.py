"""A study described as data: ``configs/studies/<name>.yaml``, resolved for one profile into a list of runs.

The reference studies ship inside the package (``attngraft/configs/studies/``); a ``configs/studies/`` directory in
the working directory is searched first, for studies of one's own.

The file::

    description: what the study asks
    data: {dataset: fashion-mnist, batch_size: 128}   # ImageDataModule arguments of every cell
    training: {optimizer: adamw, lr: 0.002}           # ImageClassifier arguments of every cell
    trainer: {gradient_clip_val: 1.0}                 # Lightning Trainer arguments of every cell
    measure: {batch_sizes: [1, 256]}                  # CPU latency batch sizes
    explain: {images: 4, method: ig}                  # the report's attribution figure (images: 0 turns it off)
    datasets:                                         # optional; default: the data's dataset, required
      - {name: fashion-mnist}
      - {name: cifar10, optional: true, vars: {image_size: 32}}   # skipped when its files are not found
    profiles:
      quick: {seeds: [0], epochs: {scratch: 2, graft: 3}, vars: {stage: layer2}, data: {}, training: {}}
      full: {seeds: [0, 1, 2], epochs: {scratch: 50, graft: 5}, vars: {stage: layer4}}
    cells:
      - name: resnet18                                # a unique name: the run directory and the table row
        label: ResNet-18                              # the table's model column
        attention: none                               # the table's attention column
        network: resnet18                             # as ImageClassifier's network: zoo, torchvision/timm, spec
        epochs: scratch                               # a key of the profile's epochs, or a number
      - name: graph_head
        pretrained: resnet18                          # backbone weights: that cell's trained network (same seed)
        network: {backbone: attngraft/resnet18, graft: [{mode: head, block: graph, stage: ${stage}}]}
        epochs: graft
        training: {lr: 0.001}                         # cell settings override the study's and the profile's

``${name}`` in any string is replaced by a variable of the profile (or the dataset entry, or ``--set``); a string
that is exactly ``${name}`` takes the variable's value with its type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attngraft.errors import ConfigError, UnknownNameError
from attngraft.recipes import find_recipe, packaged_directory
from attngraft.registry import unknown_name_message
from attngraft.validation import read_yaml

STUDY_KEYS = ("description", "data", "training", "trainer", "measure", "explain", "datasets", "profiles", "cells")
EXPLAIN_KEYS = ("images", "method")
PROFILE_KEYS = ("seeds", "epochs", "vars", "data", "training", "trainer")
CELL_KEYS = ("name", "label", "attention", "network", "pretrained", "epochs", "data", "training", "trainer")
DATASET_KEYS = ("name", "optional", "vars")
MEASURE_KEYS = ("batch_sizes", "repeats", "test_every_epoch")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Cell:
    """One model of a study, resolved for a profile and a dataset: everything needed to train and measure it.

    Attributes:
        name: Unique within the study; the run directory and the table row.
        label: The table's model column.
        attention: The table's attention column ("none" for a plain CNN).
        network: ImageClassifier's ``network`` (zoo name, torchvision/timm name, zoo mapping or graft spec).
        pretrained: The cell whose trained network gives this cell's backbone weights, or None.
        epochs: Training epochs.
        data: ImageDataModule arguments (dataset included).
        training: ImageClassifier arguments besides the network.
        trainer: Lightning Trainer arguments besides ``max_epochs``.
    """

    name: str
    label: str
    attention: str
    network: Any
    pretrained: str | None
    epochs: int
    data: dict[str, Any]
    training: dict[str, Any]
    trainer: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One cell trained once: on one dataset, with one seed."""

    cell: Cell
    dataset: str
    seed: int

    @property
    def key(self) -> str:
        """The run's directory, relative to the study's: ``<dataset>/<cell>/seed<seed>``."""
        return f"{self.dataset}/{self.cell.name}/seed{self.seed}"


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset the study runs on; an optional one is skipped when its files are not found."""

    name: str
    optional: bool = False
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A study file resolved for one profile.

    Attributes:
        name: The study's name (its file's stem).
        profile: The chosen profile.
        description: What the study asks.
        seeds: Training seeds; each cell runs once per seed.
        datasets: Where the cells run.
        batch_sizes: CPU latency is measured at these batch sizes.
        repeats: Timed repetitions of each latency measurement (the median is reported).
        test_every_epoch: Also test after every epoch, for a maximum test accuracy over epochs.
        explain_images: Test images of the report's attribution figure (0: no figure).
        explain_method: Its attribution method (see ``attngraft.explain.METHODS``).
        source: The study file.
        resolved: The whole file, with the profile applied and variables substituted (saved with the results).
    """

    name: str
    profile: str
    description: str
    seeds: list[int]
    datasets: list[DatasetEntry]
    batch_sizes: list[int]
    repeats: int
    test_every_epoch: bool
    explain_images: int
    explain_method: str
    source: Path
    resolved: dict[str, Any]
    _cells: dict[str, list[Cell]]

    def cells(self, dataset: str) -> list[Cell]:
        """The cells on ``dataset``, in the file's order (a cell comes after the cell it takes weights from)."""
        return self._cells[dataset]

    def runs(self, datasets: Sequence[str] | None = None, cells: Sequence[str] | None = None) -> list[Run]:
        """Every run, dataset by dataset, seed by seed, cell by cell; optionally only some datasets or cells.

        Selecting a cell also selects the cells it takes weights from (they must run first).
        """
        chosen = [entry.name for entry in self.datasets] if datasets is None else list(datasets)
        runs = []
        for dataset in chosen:
            wanted = self._with_dependencies(dataset, cells)
            for seed in self.seeds:
                runs += [Run(cell, dataset, seed) for cell in self.cells(dataset) if cell.name in wanted]
        return runs

    def _with_dependencies(self, dataset: str, cells: Sequence[str] | None) -> set[str]:
        by_name = {cell.name: cell for cell in self.cells(dataset)}
        if cells is None:
            return set(by_name)
        wanted: set[str] = set()
        pending = list(cells)
        while pending:
            name = pending.pop()
            if name not in by_name:
                raise UnknownNameError(f"study {self.name}: {unknown_name_message('cell', name, list(by_name))}")
            if name not in wanted:
                wanted.add(name)
                source = by_name[name].pretrained
                pending += [source] if source is not None else []
        return wanted


def study_directories() -> list[Path]:
    """Where study names are looked up: ``./configs/studies`` (if any), then the package's studies."""
    local = Path("configs") / "studies"
    packaged = packaged_directory() / "studies"
    return [local, packaged] if local.is_dir() and local.resolve() != packaged.resolve() else [packaged]


def list_studies() -> list[str]:
    """Names of the studies found in :func:`study_directories`."""
    return sorted({path.stem for directory in study_directories() for path in directory.glob("*.yaml")})


def find_study(name: str) -> Path:
    """The file of study ``name``: a name in :func:`study_directories`, or a YAML file (or a packaged one).

    A YAML path that does not exist is looked up among the packaged files (:func:`attngraft.recipes.find_recipe`).
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        found = find_recipe(path)
        if not found.is_file():
            raise ConfigError(f"no study file at {path}")
        return found
    for directory in study_directories():
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise UnknownNameError(unknown_name_message("study", name, list_studies()))


def load_study(name: str, profile: str = "quick", overrides: Mapping[str, Any] | None = None) -> Study:
    """Reads and checks a study file and resolves ``profile``; ``overrides`` replace profile variables.

    Raises:
        ConfigError: For anything missing, unknown or of the wrong type, naming the file and the key.
    """
    path = find_study(name)
    content = read_yaml(path, "study file")
    return resolve_study(content, name=path.stem, profile=profile, source=path, overrides=overrides)


def resolve_study(
    content: object, *, name: str, profile: str, source: Path, overrides: Mapping[str, Any] | None = None
) -> Study:
    """A study from the file's parsed content (see the module docstring for the format)."""
    where = str(source)
    study = _mapping(content, where)
    _reject_unknown(where, study, STUDY_KEYS)
    profiles = _mapping(study.get("profiles", {}), f"{where}: profiles")
    if profile not in profiles:
        raise UnknownNameError(f"{where}: {unknown_name_message('profile', profile, list(profiles))}")
    chosen = _mapping(profiles[profile], f"{where}: profiles.{profile}")
    _reject_unknown(f"{where}: profiles.{profile}", chosen, PROFILE_KEYS)
    seeds = _seeds(chosen.get("seeds", [0]), f"{where}: profiles.{profile}.seeds")
    variables = _mapping(chosen.get("vars", {}), f"{where}: profiles.{profile}.vars")
    data = {**_mapping(study.get("data", {}), f"{where}: data"), **_mapping(chosen.get("data", {}), where)}
    datasets = _datasets(study.get("datasets"), data.get("dataset", "fashion-mnist"), where)
    known = set(variables).union(*(entry.variables for entry in datasets))
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ConfigError(f"{where}: --set {unknown[0]}: no such variable; the variables are {sorted(known)}")
    measure = _mapping(study.get("measure", {}), f"{where}: measure")
    _reject_unknown(f"{where}: measure", measure, MEASURE_KEYS)
    batch_sizes = measure.get("batch_sizes", [1, 256])
    if not isinstance(batch_sizes, list) or not all(isinstance(size, int) and size > 0 for size in batch_sizes):
        raise ConfigError(f"{where}: measure.batch_sizes: expected positive integers, got {batch_sizes!r}")
    repeats = measure.get("repeats", 5)
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"{where}: measure.repeats: expected a positive integer, got {repeats!r}")
    test_every_epoch = measure.get("test_every_epoch", False)
    if not isinstance(test_every_epoch, bool):
        raise ConfigError(f"{where}: measure.test_every_epoch: expected true or false, got {test_every_epoch!r}")
    explain_images, explain_method = _explain(study.get("explain", {}), where)
    shared = {
        "data": data,
        "training": {**_mapping(study.get("training", {}), where), **_mapping(chosen.get("training", {}), where)},
        "trainer": {**_mapping(study.get("trainer", {}), where), **_mapping(chosen.get("trainer", {}), where)},
    }
    epochs = _mapping(chosen.get("epochs", {}), f"{where}: profiles.{profile}.epochs")
    cells = {
        entry.name: _cells(
            study.get("cells"), shared, epochs, {**variables, **entry.variables, **(overrides or {})}, entry.name, where
        )
        for entry in datasets
    }
    resolved = {
        "study": name,
        "profile": profile,
        "description": study.get("description", ""),
        "seeds": seeds,
        "datasets": [entry.name for entry in datasets],
        "vars": {**variables, **(overrides or {})},
        "measure": {"batch_sizes": batch_sizes, "repeats": repeats, "test_every_epoch": test_every_epoch},
        "explain": {"images": explain_images, "method": explain_method},
        "cells": {dataset: [vars(cell) for cell in dataset_cells] for dataset, dataset_cells in cells.items()},
    }
    return Study(
        name=name,
        profile=profile,
        description=str(study.get("description", "")),
        seeds=seeds,
        datasets=datasets,
        batch_sizes=batch_sizes,
        repeats=repeats,
        test_every_epoch=test_every_epoch,
        explain_images=explain_images,
        explain_method=explain_method,
        source=source,
        resolved=resolved,
        _cells=cells,
    )


def _explain(section: object, where: str) -> tuple[int, str]:
    """The attribution figure's image count and method (report settings: they do not change any run)."""
    from attngraft.explain.attribution import METHODS  # Captum and matplotlib load only for a study

    explain = _mapping(section, f"{where}: explain")
    _reject_unknown(f"{where}: explain", explain, EXPLAIN_KEYS)
    images, method = explain.get("images", 4), explain.get("method", "ig")
    if not isinstance(images, int) or isinstance(images, bool) or images < 0:
        raise ConfigError(f"{where}: explain.images: expected a count >= 0, got {images!r}")
    if method not in METHODS.names():
        raise ConfigError(f"{where}: explain.method: unknown {method!r}; valid: {', '.join(METHODS.names())}")
    return images, method


def _seeds(seeds: object, where: str) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{where}: expected a non-empty list of distinct integers, got {seeds!r}")
    return list(seeds)


def _datasets(entries: object, default: str, where: str) -> list[DatasetEntry]:
    if entries is None:
        return [DatasetEntry(default)]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: datasets: expected a non-empty list, got {entries!r}")
    result = []
    for index, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else _mapping(entry, f"{where}: datasets[{index}]")
        _reject_unknown(f"{where}: datasets[{index}]", entry, DATASET_KEYS)
        if not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: datasets[{index}]: needs a 'name'")
        variables = _mapping(entry.get("vars", {}), f"{where}: datasets[{index}].vars")
        result.append(DatasetEntry(entry["name"], bool(entry.get("optional", False)), variables))
    return result


def _cells(
    entries: object,
    shared: Mapping[str, dict[str, Any]],
    epochs: Mapping[str, Any],
    variables: Mapping[str, Any],
    dataset: str,
    where: str,
) -> list[Cell]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: cells: expected a non-empty list of cells")
    cells: list[Cell] = []
    for index, entry in enumerate(entries):
        raw = _mapping(entry, f"{where}: cells[{index}]")
        name = raw.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}: cells[{index}].name: expected a name of letters, digits, _ . -, got {name!r}")
        cell_where = f"{where}: cell {name}"
        _reject_unknown(cell_where, raw, CELL_KEYS)
        if "network" not in raw:
            raise ConfigError(f"{cell_where}: needs 'network'")
        if name in (cell.name for cell in cells):
            raise ConfigError(f"{cell_where}: the name is used twice")
        raw = substitute(raw, variables, cell_where)
        pretrained = raw.get("pretrained")
        if pretrained is not None and pretrained not in (cell.name for cell in cells):
            raise ConfigError(
                f"{cell_where}.pretrained: {pretrained!r} is not a cell before it "
                f"(cells before it: {[cell.name for cell in cells] or 'none'})"
            )
        sections = {
            key: substitute({**shared[key], **_mapping(raw.get(key, {}), f"{cell_where}.{key}")}, variables, cell_where)
            for key in ("data", "training", "trainer")
        }
        sections["data"]["dataset"] = dataset
        cells.append(
            Cell(
                name=name,
                label=str(raw.get("label", name)),
                attention=str(raw.get("attention", "none")),
                network=raw["network"],
                pretrained=pretrained,
                epochs=_epochs(raw.get("epochs"), epochs, cell_where),
                **sections,
            )
        )
    return cells


def _epochs(value: object, table: Mapping[str, Any], where: str) -> int:
    if isinstance(value, str):
        if value not in table:
            raise ConfigError(f"{where}.epochs: {value!r} is not in the profile's epochs {dict(table)}")
        value = table[value]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{where}.epochs: expected a positive integer or a key of the profile's epochs, got {value!r}"
        )
    return value


def substitute(value: Any, variables: Mapping[str, Any], where: str) -> Any:
    """``value`` with ``${name}`` replaced by ``variables[name]`` in every string, recursively.

    A string that is exactly ``${name}`` becomes the variable's value (keeping its type: a list, a number);
    otherwise the variable is formatted into the string.
    """
    if isinstance(value, Mapping):
        return {key: substitute(item, variables, where) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables, where) for item in value]
    if not isinstance(value, str):
        return value
    for name in _VARIABLE.findall(value):
        if name not in variables:
            raise ConfigError(f"{where}: unknown variable ${{{name}}}; the profile defines {sorted(variables)}")
    whole = _VARIABLE.fullmatch(value)
    if whole:
        return variables[whole.group(1)]
    return _VARIABLE.sub(lambda match: str(variables[match.group(1)]), value)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _reject_unknown(where: str, mapping: Mapping[str, Any], valid: Sequence[str]) -> None:
    unknown = [key for key in mapping if key not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
