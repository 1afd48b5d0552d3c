"""The training commands' plain ``--help`` is kept in the user cache under a key of everything it depends on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attngraft import _help_cache
from attngraft._help_cache import cached_help, help_file, help_key, is_plain_help

from .test_cli_startup import heavy_modules_after


def exits(code: int, text: str):
    calls: list[int] = []

    def describe() -> None:
        calls.append(1)
        print(text)
        raise SystemExit(code)

    return describe, calls


def test_only_the_plain_help_is_cached() -> None:
    assert is_plain_help(["--help"])
    assert is_plain_help(["-h"])
    assert not is_plain_help(["--config", "recipe.yaml", "--help"])  # defaults from the recipe: never cached
    assert not is_plain_help([])


def test_the_key_follows_the_words_the_terminal_width_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    key = help_key("fit", ["--help"])
    assert key == help_key("fit", ["--help"])
    assert key != help_key("fit", ["-h"]) != help_key("test", ["--help"])
    monkeypatch.setenv("COLUMNS", "60")
    assert help_key("fit", ["--help"]) != key
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "1")
    assert help_key("fit", ["--help"]) != key


def test_a_printed_help_is_kept_and_printed_again_without_describing(capsys: pytest.CaptureFixture[str]) -> None:
    describe, calls = exits(0, "usage: attngraft fit [-h]")
    assert cached_help("fit", ["--help"], describe) == 0
    assert cached_help("fit", ["--help"], describe) == 0
    assert calls == [1]
    assert capsys.readouterr().out == "usage: attngraft fit [-h]\n" * 2
    assert help_file("fit", ["--help"]).read_text() == "usage: attngraft fit [-h]\n"


def test_a_failed_help_is_not_kept(capsys: pytest.CaptureFixture[str]) -> None:
    describe, calls = exits(2, "usage: attngraft fit [-h]")
    assert cached_help("fit", ["--help"], describe) == 2
    assert cached_help("fit", ["--help"], describe) == 2
    assert calls == [1, 1]
    assert not help_file("fit", ["--help"]).exists()


def test_old_help_texts_are_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_help_cache, "KEEP_FILES", 2)
    for width in (50, 60, 70):
        monkeypatch.setenv("COLUMNS", str(width))
        cached_help("fit", ["--help"], exits(0, "usage: x")[0])
    assert len(list(help_file("fit", ["--help"]).parent.glob("*.txt"))) == 2
    assert help_file("fit", ["--help"]).exists()  # the newest stays


def test_the_second_fit_help_imports_no_heavy_library(isolated_cache: Path) -> None:
    script = """
from attngraft.cli import main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
    main(["fit", "--help"])
sys.stderr.write(out.getvalue())
"""
    first = subprocess.run(
        [sys.executable, "-c", "import contextlib, io, sys\n" + script], capture_output=True, text=True, check=True
    )
    assert first.stderr.startswith("usage: attngraft"), first.stderr
    assert "--trainer.max_epochs" in first.stderr
    assert heavy_modules_after(script) == []
    second = subprocess.run(
        [sys.executable, "-c", "import contextlib, io, sys\n" + script], capture_output=True, text=True, check=True
    )
    assert second.stderr == first.stderr
