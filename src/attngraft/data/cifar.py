"""torchvision's CIFAR classes with safe loading: imported only when a CIFAR split is opened as a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torchvision

from attngraft.data import formats
from attngraft.data.sources import cifar_class_names
from attngraft.errors import DataNotFoundError


class _ValidatedCifarMixin:
    """Replaces torchvision's md5-only checks by format validation with a safe unpickler.

    torchvision unpickles the batches with ``pickle.load``; we first parse every file it will read with
    :func:`formats.safe_unpickle`, which refuses any global other than numpy array reconstruction, so the
    later load cannot run code. It also accepts valid files whose checksum differs (re-packed copies).
    """

    root: str
    base_folder: str
    train: bool
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]
    classes: list[str]
    class_to_idx: dict[str, int]
    label_key: ClassVar[str]

    def _check_integrity(self) -> bool:  # replaces torchvision's md5 check
        folder = Path(self.root) / self.base_folder
        for file, _ in self.train_list if self.train else self.test_list:
            path = folder / file
            if not path.is_file():
                raise DataNotFoundError(f"{path}: missing CIFAR batch file")
            formats.check_cifar_batch(path, self.label_key)
        return True

    def _load_meta(self) -> None:  # replaces torchvision's md5 check + pickle.load
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        self.classes = cifar_class_names(path, self.meta["key"])
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


class SafeCIFAR10(_ValidatedCifarMixin, torchvision.datasets.CIFAR10):  # type: ignore[misc]
    """torchvision's CIFAR-10, its files checked with the safe unpickler first."""

    label_key = "labels"


class SafeCIFAR100(_ValidatedCifarMixin, torchvision.datasets.CIFAR100):  # type: ignore[misc]
    """torchvision's CIFAR-100, its files checked with the safe unpickler first."""

    label_key = "fine_labels"
