import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from attngraft.data import formats
from attngraft.data.locate import atomic_path, cache_dir, search_roots, stage_gunzip, stage_tar
from attngraft.errors import CorruptDataError

from .fixtures import idx_bytes, tar_folder


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    monkeypatch.setenv("ATTNGRAFT_DATA", str(tmp_path / "env"))
    roots = search_roots(tmp_path / "explicit", ("/usr/share/datasets/x",))
    assert roots == [tmp_path / "explicit", tmp_path / "env", isolated_cache, Path("/usr/share/datasets/x")]
    assert cache_dir() == isolated_cache


def test_search_roots_without_duplicates_or_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNGRAFT_DATA", str(tmp_path))
    assert search_roots(tmp_path, include_cache=False) == [tmp_path]


def test_atomic_path_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    destination = tmp_path / "out" / "file"

    def write_half_then_interrupt() -> None:
        with atomic_path(destination) as temporary:
            temporary.write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_half_then_interrupt()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_path_replaces_existing_file(tmp_path: Path) -> None:
    destination = tmp_path / "file"
    destination.write_bytes(b"old")
    with atomic_path(destination) as temporary:
        temporary.write_bytes(b"new")
    assert destination.read_bytes() == b"new"
    assert [path.name for path in tmp_path.iterdir()] == ["file"]


def test_gunzip_staging_is_atomic_and_checked(tmp_path: Path) -> None:
    payload = idx_bytes(np.ones((3, 4, 4), dtype=np.uint8))
    source = tmp_path / "images.gz"
    source.write_bytes(gzip.compress(payload))
    destination = tmp_path / "staged" / "images"

    def failing_check(path: Path) -> None:
        raise CorruptDataError("interrupted")

    with pytest.raises(CorruptDataError):
        stage_gunzip(source, destination, check=failing_check)
    assert list(destination.parent.iterdir()) == []

    stage_gunzip(source, destination, check=formats.check_idx_file)
    assert destination.read_bytes() == payload
    assert destination.stat().st_mtime_ns == source.stat().st_mtime_ns


def test_truncated_gzip_names_file(tmp_path: Path) -> None:
    source = tmp_path / "images.gz"
    noise = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    source.write_bytes(gzip.compress(idx_bytes(noise))[:2000])
    with pytest.raises(CorruptDataError, match=r"images.gz: truncated or corrupt gzip"):
        stage_gunzip(source, tmp_path / "staged" / "images", check=formats.check_idx_file)
    assert not (tmp_path / "staged" / "images").exists()


def test_stage_tar_extracts_folder_and_refuses_corrupt_archives(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "batches"
    folder.mkdir(parents=True)
    (folder / "a").write_text("x")
    archive = tar_folder(folder, tmp_path / "data.tar.gz")
    stage_tar(archive, tmp_path / "out", "batches")
    assert (tmp_path / "out" / "batches" / "a").read_text() == "x"

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(CorruptDataError, match=r"broken.tar.gz: truncated or corrupt tar"):
        stage_tar(broken, tmp_path / "out2", "batches")
    assert not (tmp_path / "out2" / "batches").exists()
    with pytest.raises(CorruptDataError, match="archive has no folder 'other'"):
        stage_tar(archive, tmp_path / "out3", "other")
    assert os.listdir(tmp_path / "out3") == []


def test_atomic_path_gives_new_files_the_umask_mode_and_keeps_an_existing_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "new") as temporary:
            temporary.write_bytes(b"x")
        existing = tmp_path / "existing"
        existing.write_bytes(b"old")
        existing.chmod(0o600)
        with atomic_path(existing) as temporary:
            temporary.write_bytes(b"new")
    finally:
        os.umask(previous)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o644
    assert existing.stat().st_mode & 0o777 == 0o600
