"""Atomic writes: a full disk is named, and the previous file stays intact."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from attngraft._io import atomic_path, write_json
from attngraft.data import locate
from attngraft.errors import DiskFullError


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(path, {"accuracy": 0.9})

    def write_on_a_full_disk() -> None:
        with atomic_path(path) as temporary:
            temporary.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"{path}: no space left on device") as raised:
        write_on_a_full_disk()
    assert raised.value.errno == errno.ENOSPC
    assert path.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x") as _:
        raise PermissionError(errno.EACCES, "denied")


def test_staging_on_a_full_disk_blames_the_disk_not_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    source = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(source, "wb") as file:
        file.write(b"\0" * 1000)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    destination = tmp_path / "cache" / "train-images-idx3-ubyte"
    with pytest.raises(DiskFullError, match=f"{destination}: no space left on device") as raised:
        locate.stage_gunzip(source, destination, check=lambda path: None)
    assert "corrupt" not in str(raised.value)
    assert not destination.exists()
