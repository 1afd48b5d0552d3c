"""Validation of the standard on-disk formats, before torchvision reads them.

torchvision's readers fail with bare ``AssertionError``/``RuntimeError`` that do not name the file, and CIFAR's
python batches are pickles. These checks name the file and the problem, and :func:`safe_unpickle` parses a pickle
with an allow-list of globals, so a crafted file can never run code.
"""

from __future__ import annotations

import io
import operator
import pickle
import struct
from functools import reduce
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from typing_extensions import override

from attngraft.errors import CorruptDataError

# IDX type byte -> bytes per element (LeCun's MNIST format).
_IDX_ITEM_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def check_idx_file(path: Path, expected_ndim: int | None = None) -> tuple[int, ...]:
    """Checks that ``path`` is a complete, uncompressed IDX file and returns its shape.

    Raises:
        CorruptDataError: Naming the file, if the magic number, type, rank or length is wrong.
    """
    with open(path, "rb") as file:
        header = file.read(4)
        if len(header) < 4 or header[0] != 0 or header[1] != 0:
            raise CorruptDataError(f"{path}: not an IDX file (bad magic number {header.hex() or 'empty'})")
        type_code, ndim = header[2], header[3]
        if type_code not in _IDX_ITEM_SIZES or not 1 <= ndim <= 3:
            raise CorruptDataError(f"{path}: unsupported IDX type 0x{type_code:02x} or rank {ndim}")
        dims_bytes = file.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise CorruptDataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    if expected_ndim is not None and ndim != expected_ndim:
        raise CorruptDataError(f"{path}: expected an IDX file of rank {expected_ndim}, found rank {ndim}")
    expected_bytes = 4 + 4 * ndim + reduce(operator.mul, shape, 1) * _IDX_ITEM_SIZES[type_code]
    actual_bytes = path.stat().st_size
    if actual_bytes != expected_bytes:
        raise CorruptDataError(
            f"{path}: truncated or corrupt IDX file: header says shape {shape} ({expected_bytes} bytes), "
            f"file has {actual_bytes} bytes"
        )
    return shape


def read_idx(path: Path, expected_ndim: int | None = None) -> np.ndarray:
    """Reads a checked uint8 IDX file (MNIST images or labels) into a numpy array of the header's shape.

    Raises:
        CorruptDataError: Naming the file, for anything :func:`check_idx_file` refuses or a type other than uint8.
    """
    shape = check_idx_file(path, expected_ndim)
    with open(path, "rb") as file:
        type_code = file.read(4)[2]
        if type_code != 0x08:
            raise CorruptDataError(f"{path}: expected IDX type 0x08 (unsigned bytes), found 0x{type_code:02x}")
        return np.fromfile(file, dtype=np.uint8, offset=4 * len(shape)).reshape(shape)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays and plain containers."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    @override
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> Any:
    """Loads a pickle that may only contain numpy arrays, numbers, strings, bytes, lists and dicts.

    Raises:
        CorruptDataError: Naming the file, if it is truncated, not a pickle, or references any other global.
    """
    try:
        data = path.read_bytes()
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise CorruptDataError(f"{path}: not a valid CIFAR python batch ({error})") from None


def check_cifar_batch(path: Path, label_key: str) -> int:
    """Checks one CIFAR python batch (dict with uint8 ``data`` of shape (N, 3072) and N labels).

    Returns:
        The number of images N.
    """
    return len(read_cifar_batch(path, label_key)[1])


def read_cifar_batch(path: Path, label_key: str) -> tuple[Any, list[int]]:
    """Reads one CIFAR python batch with the safe unpickler.

    Returns:
        The images (numpy array of shape (N, 3072): 1,024 red, green and blue values per image) and their labels.

    Raises:
        CorruptDataError: Naming the file and what is wrong with it.
    """
    entry = safe_unpickle(path)
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise CorruptDataError(f"{path}: expected a dict with 'data' and {label_key!r}, found {found}")
    data, labels = entry["data"], entry[label_key]
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != 3 * 32 * 32:
        raise CorruptDataError(f"{path}: 'data' must have shape (N, 3072), found {shape}")
    if len(labels) != shape[0]:
        raise CorruptDataError(f"{path}: {shape[0]} images but {len(labels)} labels")
    return data, list(labels)
