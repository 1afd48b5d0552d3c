"""The recipes, graft specs and studies shipped inside the package (``attngraft/configs/``), found from anywhere.

A path that names a file is used as it is. A relative path that does not exist is looked up in the package's
``configs`` directory, with a leading ``configs/`` dropped and ``.yaml`` added when there is no suffix, so each of
these works from any directory, with a source checkout or an installed wheel::

    attngraft fit --config configs/resnet18_fashion_mnist.yaml     # the README's form
    attngraft fit --config resnet18_fashion_mnist                  # the same packaged recipe
    attngraft graft-info grafts/resnet18_non_local_insert          # a packaged graft spec

A local file always wins over a packaged one of the same name, so a user's edited copy is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path

from attngraft.errors import ConfigError
from attngraft.validation import read_yaml

SUFFIXES = (".yaml", ".yml")
CONFIG_OPTIONS = ("--config", "-c")


def packaged_directory() -> Path:
    """The package's ``configs`` directory: recipes, ``grafts/`` (graft specs) and ``studies/``."""
    return Path(str(files("attngraft") / "configs"))


def list_recipes(folder: str = "") -> list[str]:
    """Names of the packaged YAML files in ``folder`` ("", "grafts" or "studies"), relative to ``configs/``."""
    root = packaged_directory()
    return sorted(path.relative_to(root).with_suffix("").as_posix() for path in (root / folder).glob("*.yaml"))


def packaged_recipe(path: str | Path) -> Path | None:
    """The packaged file that relative ``path`` names (see the module docstring), or None if there is none."""
    given = Path(path)
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    if given.is_absolute() or not parts or ".." in parts:
        return None
    relative = Path(*parts)
    if relative.suffix not in SUFFIXES:
        relative = relative.with_name(relative.name + ".yaml")
    candidate = packaged_directory() / relative
    return candidate if candidate.is_file() else None


def find_recipe(path: str | Path) -> Path:
    """``path`` when it is a file, else the packaged file it names, else ``path`` unchanged (the caller reports it)."""
    given = Path(path)
    if given.is_file():
        return given
    return packaged_recipe(given) or given


def recipe_arguments(arguments: Sequence[str]) -> list[str]:
    """Training arguments with every ``--config``/``-c`` value resolved by :func:`find_recipe`.

    Raises:
        ConfigError: For a ``--config`` path that is neither a file nor a packaged recipe, listing the recipes.
            (An inline YAML mapping, ``--config '{...}'``, is passed on untouched.)
    """
    resolved = list(arguments)
    for index, argument in enumerate(resolved):
        option, equals, value = argument.partition("=")
        if option not in CONFIG_OPTIONS:
            continue
        target = index
        if not equals:
            if index + 1 >= len(resolved):
                break
            target, value = index + 1, resolved[index + 1]
        if value.lstrip().startswith("{") or "\n" in value:
            continue
        found = find_recipe(value)
        if not found.exists():
            raise ConfigError(
                f"{option} {value}: no such file, and no packaged recipe of that name; "
                f"packaged recipes: {', '.join(list_recipes())}"
            )
        if not isinstance(read_yaml(found, option), Mapping):  # empty, not UTF-8, not YAML: one line each
            raise ConfigError(f"{option} {found}: expected a mapping of sections (model, data, trainer, ...)")
        resolved[target] = f"{option}={found}" if equals else str(found)
    return resolved
