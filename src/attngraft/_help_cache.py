"""The training commands' ``--help``, kept once written.

``attngraft fit --help`` (and ``validate``, ``test``, ``predict``, ``lr-find``) is LightningCLI's: it describes the
Trainer, the model and the data module from their signatures, so it must import Lightning, torch, timm and
torchvision first (6-9 s of CPU on a 2-core machine; ``import lightning`` alone takes 5.6 s). The text depends only
on the installed code, the command words and the terminal's width, so it is kept in the user cache under a key of
all of them and printed from there afterwards in a fraction of a second. Only the exact forms
``attngraft COMMAND --help`` / ``-h`` are answered from the cache; anything else (``--config X --help``, which shows
the recipe's values as defaults) is always LightningCLI's own answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from attngraft._io import atomic_path
from attngraft.data.locate import cache_dir

HELP_WORDS = ("-h", "--help")
# Distributions whose code builds the help text (their versions are part of the key).
DISTRIBUTIONS = ("attngraft", "lightning", "jsonargparse", "torch", "torchvision", "timm", "torchmetrics")
KEEP_FILES = 32  # help texts kept; the oldest go first
ENVIRONMENT_PREFIXES = ("JSONARGPARSE_", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "PL_", "LIGHTNING_")


def is_plain_help(args: Sequence[str]) -> bool:
    """Whether ``args`` (the words after the command) ask for nothing but the help."""
    return len(args) == 1 and args[0] in HELP_WORDS


def help_key(command: str, args: Sequence[str]) -> str:
    """A digest of everything the help text depends on: command words, terminal width, code and environment."""
    digest = hashlib.sha256()
    for part in (command, *args, str(shutil.get_terminal_size().columns), sys.version, *_versions()):
        digest.update(part.encode() + b"\0")
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):  # an edited source tree (editable install) changes the key
        status = path.stat()
        digest.update(f"{path.relative_to(package)}:{status.st_mtime_ns}:{status.st_size}\0".encode())
    for name in sorted(os.environ):
        if name.startswith(ENVIRONMENT_PREFIXES):
            digest.update(f"{name}={os.environ[name]}\0".encode())
    return digest.hexdigest()[:32]


def _versions() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in DISTRIBUTIONS:
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return found


def help_file(command: str, args: Sequence[str]) -> Path:
    """Where the help of ``attngraft COMMAND ARGS`` is kept."""
    return cache_dir() / "help" / f"{command}-{help_key(command, args)}.txt"


def cached_help(command: str, args: Sequence[str], describe: Callable[[], object]) -> int:
    """Prints the help of ``attngraft COMMAND ARGS``: from the cache, or from ``describe()`` (then kept).

    Args:
        command: The training command.
        args: Its words: one of :data:`HELP_WORDS`.
        describe: Prints the help and exits (LightningCLI's ``--help``).

    Returns:
        The exit code: 0 once the help is printed.
    """
    path = help_file(command, args)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    captured = io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(captured):
        try:
            describe()
        except SystemExit as exit_:
            code = exit_.code
    text = captured.getvalue()
    sys.stdout.write(text)
    if code in (0, None) and text.startswith("usage:"):
        with contextlib.suppress(OSError):  # a read-only cache only costs the next call its time
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                temporary.write_text(text, encoding="utf-8")
            _prune(path.parent)
        return 0
    return code if isinstance(code, int) else 1


def _prune(folder: Path) -> None:
    """Keeps the :data:`KEEP_FILES` newest help texts (stale keys pile up as the code or the terminal changes)."""
    files = sorted(folder.glob("*.txt"), key=lambda file: file.stat().st_mtime_ns, reverse=True)
    for stale in files[KEEP_FILES:]:
        stale.unlink(missing_ok=True)
