"""``attngraft --help`` and the non-training commands' ``--help`` import none of the heavy libraries.

Timing is not asserted here (``benchmarks/cli_startup.py`` measures it); what makes help slow is importing torch,
Lightning, timm or torchvision, and that is checked in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from attngraft.cli import TRAIN_COMMANDS, build_parser

HEAVY = ("torch", "lightning", "timm", "torchvision", "torchmetrics", "matplotlib", "numpy")


def subcommands() -> list[str]:
    """Every subcommand of the parser that is not a LightningCLI one (those need Lightning to describe themselves)."""
    actions = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return [name for name in actions[0].choices if name not in TRAIN_COMMANDS]


def heavy_modules_after(script: str) -> dict[str, object]:
    """Runs ``script`` in a fresh interpreter; returns its printed JSON with the heavy packages it imported."""
    report = f"""
import contextlib, io, json, sys
{script}
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
"""
    result = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_every_non_training_command_is_covered() -> None:
    assert {"data", "blocks", "models", "study", "explain", "cost"} <= set(subcommands())


@pytest.mark.parametrize("command", [[], *([name] for name in subcommands())], ids=lambda words: " ".join(words))
def test_help_imports_no_heavy_library(command: list[str]) -> None:
    imported = heavy_modules_after(
        f"""
from attngraft.cli import main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
    main({[*command, "--help"]!r})
assert "usage: attngraft" in out.getvalue(), out.getvalue()
"""
    )
    assert imported == []


def test_version_and_the_package_import_no_heavy_library() -> None:
    imported = heavy_modules_after(
        """
import attngraft
from attngraft.cli import main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
    main(["--version"])
assert out.getvalue().startswith("attngraft "), out.getvalue()
"""
    )
    assert imported == []


def test_describing_fashion_mnist_imports_no_torch(fashion_mnist_dir) -> None:
    """``attngraft data`` on an in-memory dataset reads and measures it with numpy alone."""
    imported = heavy_modules_after(
        f"""
from attngraft.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(["data", "fashion-mnist", "--data-dir", {str(fashion_mnist_dir)!r}]) == 0
assert "official train 60000" in out.getvalue(), out.getvalue()
"""
    )
    assert {name.split(".")[0] for name in imported} == {"numpy"}
