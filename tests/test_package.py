"""The packages' public names: listed in one table, resolved on first use, visible to type checkers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

import attngraft
import attngraft.data

# Packages whose public names are imported on first use, and the names each lists beside its lazy table.
LAZY_PACKAGES: dict[str, tuple[ModuleType, tuple[str, ...]]] = {
    "attngraft": (attngraft, ("__version__",)),
    "attngraft.data": (attngraft.data, ()),
}
PUBLIC_NAMES = [(package, name) for package, (module, _) in LAZY_PACKAGES.items() for name in sorted(module._LAZY)]


def type_checking_imports(package: ModuleType) -> dict[str, str]:
    """Name -> module of the ``from ... import`` lines under ``if TYPE_CHECKING:`` in the package's ``__init__``."""
    tree = ast.parse(Path(str(package.__file__)).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {
        alias.name: str(node.module) for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }


@pytest.mark.parametrize("package", sorted(LAZY_PACKAGES))
def test_the_lazy_table_the_type_checking_block_and_all_agree(package: str) -> None:
    module, extra = LAZY_PACKAGES[package]
    assert type_checking_imports(module) == module._LAZY
    assert sorted(module.__all__) == sorted([*module._LAZY, *extra])


@pytest.mark.parametrize(("package", "name"), PUBLIC_NAMES)
def test_a_public_name_is_its_submodules_object(package: str, name: str) -> None:
    module = LAZY_PACKAGES[package][0]
    assert getattr(module, name) is getattr(importlib.import_module(module._LAZY[name]), name)
    assert name in vars(module)  # cached: the next lookup does not go through __getattr__


@pytest.mark.parametrize("package", sorted(LAZY_PACKAGES))
def test_dir_lists_every_public_name(package: str) -> None:
    module = LAZY_PACKAGES[package][0]
    assert set(module.__all__) <= set(dir(module))


def test_the_version_is_a_string() -> None:
    assert isinstance(attngraft.__version__, str)
    assert attngraft.__version__


@pytest.mark.parametrize("package", sorted(LAZY_PACKAGES))
def test_an_unknown_name_raises_attribute_error_naming_it(package: str) -> None:
    with pytest.raises(AttributeError, match="has no attribute 'create_blocks'"):
        getattr(LAZY_PACKAGES[package][0], "create_blocks")  # noqa: B009
