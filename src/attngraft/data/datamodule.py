"""LightningDataModule over any registered dataset: seeded train/val split, test set, transforms."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from attngraft.data.datasets import get_dataset_spec, load_split, locate_dataset
from attngraft.data.splits import TransformedSubset, split_indices
from attngraft.data.transforms import build_transform


def default_num_workers() -> int:
    """Data-loading workers: one per available core, at most 4."""
    return min(4, len(os.sched_getaffinity(0)))


class ImageDataModule(L.LightningDataModule):
    """Train/val/test loaders for a registered dataset.

    The validation set is a seeded random subset of the official training set; the test set is the
    official test set.

    Args:
        dataset: Registered dataset name (see ``attngraft.data.list_datasets()``).
        data_dir: Directory searched first for the files.
        batch_size: Images per batch.
        num_workers: Loader processes; default one per core (at most 4).
        val_size: Images held out of the official train set (or a fraction); default the dataset's.
        split_seed: Seed of the train/val split (independent of the training seed).
        image_size: Resize images to this square side (e.g. 224 for ImageNet backbones).
        channels: Replicate grey images to this many channels (3 for RGB backbones).
        normalize: Normalise with the dataset's mean and std.
        download: Allow torchvision's downloader when the files are not found (needs internet).
        train_augment: Augmentations for training images only.
    """

    def __init__(
        self,
        dataset: str = "fashion-mnist",
        *,
        data_dir: str | Path | None = None,
        batch_size: int = 128,
        num_workers: int | None = None,
        val_size: int | float | None = None,
        split_seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        normalize: bool = True,
        download: bool = False,
        train_augment: Sequence[torch.nn.Module] = (),
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = get_dataset_spec(dataset)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.val_size = self.spec.val_size if val_size is None else val_size
        self.split_seed = split_seed
        self.download = download
        transform = partial(
            build_transform,
            self.spec.mean,
            self.spec.std,
            image_size=image_size,
            channels=channels,
            normalize=normalize,
        )
        self.train_transform = transform(augment=train_augment)
        self.eval_transform = transform()
        self.splits: dict[str, TransformedSubset] = {}
        self.classes: list[str] = []

    def prepare_data(self) -> None:
        """Finds (and if needed stages or downloads) the files; runs once per node."""
        locate_dataset(self.spec.name, data_dir=self.data_dir, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Opens the splits needed for ``stage`` (fit, validate, test, predict or None for all)."""
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            official_train = load_split(self.spec.name, train=True, data_dir=self.data_dir)
            train_indices, val_indices = split_indices(len(official_train), self.val_size, self.split_seed)  # type: ignore[arg-type]
            self.splits["train"] = TransformedSubset(official_train, train_indices, self.train_transform)
            self.splits["val"] = TransformedSubset(official_train, val_indices, self.eval_transform)
            self.classes = list(official_train.classes)  # type: ignore[attr-defined]
        if stage in (None, "test", "predict") and "test" not in self.splits:
            official_test = load_split(self.spec.name, train=False, data_dir=self.data_dir)
            self.splits["test"] = TransformedSubset(official_test, range(len(official_test)), self.eval_transform)  # type: ignore[arg-type]
            self.classes = list(official_test.classes)  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        """Number of classes (known after :meth:`setup` for image folders)."""
        return self.spec.num_classes if self.spec.num_classes is not None else len(self.classes)

    def _loader(self, split: str, shuffle: bool) -> DataLoader[tuple[torch.Tensor, int]]:
        if split not in self.splits:
            raise RuntimeError(f"split {split!r} is not set up; call setup() first")
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """Validation batches in a fixed order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """Official test-set batches in a fixed order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """The test set, for ``predict``."""
        return self._loader("test", shuffle=False)
