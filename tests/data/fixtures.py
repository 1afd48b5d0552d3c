"""Writers of small dataset files in the real on-disk formats (IDX, CIFAR python batches, image folders)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

IDX_FILES = {
    "train-images-idx3-ubyte": "train_images",
    "train-labels-idx1-ubyte": "train_labels",
    "t10k-images-idx3-ubyte": "test_images",
    "t10k-labels-idx1-ubyte": "test_labels",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array as an IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_arrays(num_train: int = 40, num_test: int = 20, num_classes: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(num_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(num_train) % num_classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(num_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(num_test) % num_classes).astype(np.uint8),
    }


def write_idx_dataset(directory: Path, arrays: dict, gz: bool = True) -> Path:
    """Writes the four MNIST-family files (gzipped like the Debian package, or raw) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for file, key in IDX_FILES.items():
        payload = idx_bytes(arrays[key])
        if gz:
            (directory / f"{file}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / file).write_bytes(payload)
    return directory


def cifar_batch(num_images: int, label_key: str, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "fixture batch",
        "data": rng.integers(0, 256, size=(num_images, 3 * 32 * 32), dtype=np.uint8),
        label_key: [index % num_classes for index in range(num_images)],
        "filenames": [f"image_{index}.png" for index in range(num_images)],
    }


def write_cifar_folder(root: Path, cifar100: bool = False, per_batch: int = 10) -> Path:
    """Writes an extracted ``cifar-10-batches-py`` (or ``cifar-100-python``) folder with small batches."""
    if cifar100:
        folder, label_key, classes = root / "cifar-100-python", "fine_labels", 100
        files, meta = ["train", "test"], ("meta", "fine_label_names")
    else:
        folder, label_key, classes = root / "cifar-10-batches-py", "labels", 10
        files = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]
        meta = ("batches.meta", "label_names")
    folder.mkdir(parents=True, exist_ok=True)
    for seed, file in enumerate(files):
        with open(folder / file, "wb") as handle:
            pickle.dump(cifar_batch(per_batch, label_key, classes, seed), handle, protocol=2)
    with open(folder / meta[0], "wb") as handle:
        pickle.dump({meta[1]: [f"class_{index}" for index in range(classes)]}, handle, protocol=2)
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(directory / f"{index}.png")
    return root


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"data": _RunsCode(marker), "labels": []}, protocol=2)


def write_class_folders(
    root: Path, counts: dict[str, int], *, size: tuple[int, int] = (6, 4), seed: int = 0, suffix: str = ".png"
) -> Path:
    """Writes a flat ``root/<class>/<index>.png`` folder of random RGB images, ``counts[class]`` per class."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / f"{index}{suffix}")
    return root
