"""The package's public names: listed in one table, resolved on first use, visible to type checkers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import attngraft


def type_checking_imports() -> dict[str, str]:
    """Name -> module of the ``from ... import`` lines under ``if TYPE_CHECKING:`` in ``attngraft/__init__.py``."""
    tree = ast.parse(Path(attngraft.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {
        alias.name: str(node.module) for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }


def test_the_lazy_table_the_type_checking_block_and_all_agree() -> None:
    assert type_checking_imports() == attngraft._LAZY
    assert sorted(attngraft.__all__) == sorted([*attngraft._LAZY, "__version__"])


@pytest.mark.parametrize("name", sorted(attngraft._LAZY))
def test_a_public_name_is_its_submodules_object(name: str) -> None:
    assert getattr(attngraft, name) is getattr(importlib.import_module(attngraft._LAZY[name]), name)
    assert name in vars(attngraft)  # cached: the next lookup does not go through __getattr__


def test_dir_lists_every_public_name() -> None:
    assert set(attngraft.__all__) <= set(dir(attngraft))


def test_the_version_is_a_string() -> None:
    assert isinstance(attngraft.__version__, str)
    assert attngraft.__version__


def test_an_unknown_name_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'create_blocks'"):
        attngraft.create_blocks  # noqa: B018
