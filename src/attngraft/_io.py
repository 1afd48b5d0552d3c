"""File writing shared by every room: atomic replacement through a temporary file beside the destination."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard

from attngraft.errors import DiskFullError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(error: BaseException) -> TypeGuard[OSError]:
    """Whether ``error`` says the disk (or the user's quota) is full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


def disk_full(path: Path, error: OSError) -> DiskFullError:
    """The error for a write of ``path`` that ran out of space (its ``errno`` kept, its message one line)."""
    full = DiskFullError(
        f"{path}: no space left on device while writing it; nothing was replaced: free some space and run again"
    )
    full.errno = error.errno
    return full


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``destination``; renames it into place only if the block succeeds.

    Raises:
        DiskFullError: Naming ``destination``, when the disk fills up meanwhile (the previous file stays intact).
    """
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    except OSError as error:
        raise disk_full(destination, error) if is_no_space(error) else error from None
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        try:
            yield temporary_path
        except OSError as error:
            if is_no_space(error) and not isinstance(error, DiskFullError):
                raise disk_full(destination, error) from None
            raise
        if temporary_path.is_file():  # mkstemp creates 0600; give the file the mode a plain open() would
            os.chmod(temporary_path, _file_mode(destination))
        os.replace(temporary_path, destination)
    finally:
        if temporary_path.is_dir():
            shutil.rmtree(temporary_path, ignore_errors=True)
        else:
            temporary_path.unlink(missing_ok=True)


def _file_mode(destination: Path) -> int:
    """The existing destination's permission bits, else 0666 less the process's umask."""
    if destination.exists():
        return destination.stat().st_mode & 0o777
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (os.umask would set it meanwhile)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_json(path: Path, content: object) -> None:
    """Writes ``content`` as indented JSON, atomically (NaN as null)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(_no_nan(content), indent=2) + "\n")


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _no_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(item) for item in value]
    return value


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
