import pickle
from pathlib import Path

import numpy as np
import pytest

from attngraft.data import formats
from attngraft.errors import CorruptDataError

from .fixtures import cifar_batch, idx_bytes, malicious_pickle


def test_idx_file_shape(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8)))
    assert formats.check_idx_file(path) == (5, 28, 28)


def test_truncated_idx_file_names_file_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))[:-100])
    with pytest.raises(CorruptDataError, match=r"images: truncated or corrupt IDX file.*\(5, 28, 28\)"):
        formats.check_idx_file(path)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", "bad magic number empty"),
        (b"PK\x03\x04rest", "bad magic"),
        (b"\x00\x00\x07\x03", "unsupported IDX type"),
    ],
)
def test_not_an_idx_file(tmp_path: Path, payload: bytes, problem: str) -> None:
    path = tmp_path / "labels"
    path.write_bytes(payload)
    with pytest.raises(CorruptDataError, match=problem):
        formats.check_idx_file(path)


def test_wrong_rank(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros((5, 2), dtype=np.uint8)))
    with pytest.raises(CorruptDataError, match="expected an IDX file of rank 1"):
        formats.check_idx_file(path, expected_ndim=1)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_safe_unpickle_reads_cifar_batches(tmp_path: Path, protocol: int) -> None:
    batch = cifar_batch(4, "labels", 10, seed=1)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = formats.safe_unpickle(path)
    np.testing.assert_array_equal(loaded["data"], batch["data"])
    assert formats.check_cifar_batch(path, "labels") == 4


def test_safe_unpickle_refuses_code_and_does_not_run_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(malicious_pickle(marker))
    with pytest.raises(CorruptDataError, match=r"data_batch_1: .*posix.mkdir is not allowed"):
        formats.safe_unpickle(path)
    assert not marker.exists()


def test_truncated_pickle_names_file(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(cifar_batch(4, "labels", 10, seed=1), protocol=2)[:500])
    with pytest.raises(CorruptDataError, match="test_batch: not a valid CIFAR python batch"):
        formats.safe_unpickle(path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda batch: batch.pop("labels"), "expected a dict with 'data' and 'labels'"),
        (lambda batch: batch.update(data=np.zeros((4, 10), dtype=np.uint8)), r"shape \(N, 3072\)"),
        (lambda batch: batch.update(labels=[0]), "4 images but 1 labels"),
    ],
)
def test_cifar_batch_structure(tmp_path: Path, change, problem: str) -> None:
    batch = cifar_batch(4, "labels", 10, seed=1)
    change(batch)
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptDataError, match=problem):
        formats.check_cifar_batch(path, "labels")
