"""Where dataset files are looked for, and atomic staging into the user cache.

Search order: an explicit ``data_dir``, ``$ATTNGRAFT_DATA``, the user cache (``$XDG_CACHE_HOME/attngraft``,
default ``~/.cache/attngraft``), then system locations such as ``/usr/share/datasets/fashion-mnist``.
Staging (decompressing, extracting) always writes into the cache through a temporary name and an atomic
rename, so an interrupted staging never leaves a partial file that is later taken as valid.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from attngraft._io import atomic_path, disk_full, is_no_space
from attngraft.errors import CorruptDataError

DATA_ENV = "ATTNGRAFT_DATA"


def cache_dir() -> Path:
    """Returns attngraft's user cache directory (not created)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attngraft"


def search_roots(
    data_dir: str | Path | None, system_dirs: tuple[str, ...] = (), *, include_cache: bool = True
) -> list[Path]:
    """Returns the directories to search, in priority order, without duplicates."""
    candidates: list[str | Path] = []
    if data_dir is not None:
        candidates.append(data_dir)
    if os.environ.get(DATA_ENV):
        candidates.append(os.environ[DATA_ENV])
    if include_cache:
        candidates.append(cache_dir())
    candidates.extend(system_dirs)
    roots: list[Path] = []
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path not in roots:
            roots.append(path)
    return roots


def staging_dir(name: str, source: Path) -> Path:
    """Returns the cache directory where files from ``source`` are staged for dataset ``name``.

    Keyed by the source's absolute path so two different copies of a dataset never overwrite each other.
    """
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "staged" / f"{name}-{key}"


def is_fresh(staged: Path, source: Path) -> bool:
    """True when ``staged`` exists and was staged from the current version of ``source``."""
    return staged.exists() and staged.stat().st_mtime_ns == source.stat().st_mtime_ns


def stage_gunzip(source: Path, destination: Path, check: Callable[[Path], object]) -> None:
    """Decompresses ``source`` (.gz) to ``destination`` atomically, after ``check`` accepts the result.

    The destination gets the source's modification time, which :func:`is_fresh` compares.

    Raises:
        CorruptDataError: Naming ``source`` if it is not a complete gzip file.
    """
    with atomic_path(destination) as temporary:
        try:
            with gzip.open(source, "rb") as compressed, open(temporary, "wb") as out:
                shutil.copyfileobj(compressed, out, length=1 << 20)
        except (OSError, EOFError, zlib.error) as error:
            if is_no_space(error):
                raise disk_full(destination, error) from None  # the source is fine: the cache's disk is full
            raise CorruptDataError(f"{source}: truncated or corrupt gzip file ({error})") from None
        check(temporary)
        source_stat = source.stat()
        os.utime(temporary, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))


def stage_tar(source: Path, destination: Path, member_dir: str) -> None:
    """Extracts directory ``member_dir`` of the tar archive ``source`` into ``destination/member_dir``.

    Extraction goes to a temporary directory that is renamed into place, so a half-extracted archive
    is never visible. Uses the ``data`` filter: no absolute paths, links out of the tree or devices.

    Raises:
        CorruptDataError: Naming ``source`` if it is not a complete tar archive or lacks ``member_dir``.
    """
    target = destination / member_dir
    destination.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{member_dir}.", dir=destination))
    try:
        try:
            with tarfile.open(source) as archive:
                archive.extractall(temporary, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            if is_no_space(error):
                raise disk_full(target, error) from None  # the source is fine: the cache's disk is full
            raise CorruptDataError(f"{source}: truncated or corrupt tar archive ({error})") from None
        if not (temporary / member_dir).is_dir():
            raise CorruptDataError(f"{source}: archive has no folder {member_dir!r}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary / member_dir, target)
        source_stat = source.stat()
        os.utime(target, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
