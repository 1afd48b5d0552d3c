import numpy as np
import pytest

from attngraft.data import summarize
from attngraft.data.summary import _in_memory_pixels

from .fixtures import write_cifar_folder


@pytest.mark.parametrize("shape", [(7, 5, 4), (6, 3, 2, 3)])
def test_in_memory_statistics_equal_the_direct_float64_ones(shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    pixels = _in_memory_pixels(data)
    flat = (data.astype(np.float64) / 255).reshape(-1, 1 if len(shape) == 3 else shape[-1])  # (N*H*W, C)
    np.testing.assert_allclose(pixels.mean, flat.mean(axis=0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(pixels.std, flat.std(axis=0), rtol=0, atol=1e-14)
    channels = 1 if len(shape) == 3 else shape[-1]
    assert dict(pixels.shapes) == {(channels, shape[1], shape[2]): shape[0]}


def test_cifar_summary_counts_classes_of_every_split(tmp_path) -> None:
    write_cifar_folder(tmp_path, per_batch=10)  # labels index % 10 in every batch of 10
    summary = summarize("cifar10", data_dir=tmp_path, val_size=10)
    assert summary.split_sizes == {"train": 40, "val": 10, "test": 10}
    counts = summary.class_counts
    assert [train + val for train, val in zip(counts["train"], counts["val"], strict=True)] == [5] * 10
    assert summary.class_counts["test"] == [1] * 10
    assert summary.image_shape == (3, 32, 32)
    assert summary.classes[3] == "class_3"
