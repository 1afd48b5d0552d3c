"""File writing shared by every room: atomic replacement through a temporary file beside the destination."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``destination``; renames it into place only if the block succeeds."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, destination)
    finally:
        if temporary_path.is_dir():
            shutil.rmtree(temporary_path, ignore_errors=True)
        else:
            temporary_path.unlink(missing_ok=True)
