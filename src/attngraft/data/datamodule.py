"""LightningDataModule over any registered dataset: seeded train/val split, test set, transforms."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from attngraft.data.datasets import get_dataset_spec, load_split, locate_dataset
from attngraft.data.splits import TransformedSubset, split_indices
from attngraft.data.transforms import build_transform
from attngraft.errors import check_values

# torchdata 0.11 calls a torch API that torch 2.14 deprecates, once per loader iteration; nothing for users to fix.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


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
        train_size: Train on only this many of the remaining images (quick runs, tests); default all.
        split_seed: Seed of the train/val split (independent of the training seed).
        image_size: Resize images to this square side (e.g. 224 for ImageNet backbones).
        channels: Replicate grey images to this many channels (3 for RGB backbones).
        normalize: Normalise with the dataset's mean and std.
        download: Allow torchvision's downloader when the files are not found (needs internet).
        train_augment: Augmentations for training images only.
        cache_images: Keep transformed images in memory after their first use, when the transform is deterministic
            (evaluation, and training without augmentation), the dataset fits in 1 GiB and the loader runs in the
            main process (``num_workers=0``); data modules of one process share them. Saves the per-image decoding
            and transform of every later epoch.
    """

    def __init__(
        self,
        dataset: str = "fashion-mnist",
        *,
        data_dir: str | Path | None = None,
        batch_size: int = 128,
        num_workers: int | None = None,
        val_size: int | float | None = None,
        train_size: int | None = None,
        split_seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        normalize: bool = True,
        download: bool = False,
        train_augment: Sequence[torch.nn.Module] = (),
        cache_images: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(val_size, float) and val_size.is_integer() and val_size >= 1:
            val_size = int(val_size)  # a count written as a float (YAML or a command line)
        _check_config(batch_size, num_workers, val_size, train_size)
        self.spec = get_dataset_spec(dataset)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.val_size = self.spec.val_size if val_size is None else val_size
        self.train_size = train_size
        self.split_seed = split_seed
        self.channels = channels
        self.image_size = image_size
        self.normalize = normalize
        self.train_augment = tuple(train_augment)
        self.cache_images = cache_images
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
        # Split name → dataset of (input, label); a feature cache may swap in precomputed backbone features.
        self.splits: dict[str, Dataset[tuple[torch.Tensor, int]]] = {}
        self.classes: list[str] = []

    def prepare_data(self) -> None:
        """Finds (and if needed stages or downloads) the files; runs once per node."""
        locate_dataset(self.spec.name, data_dir=self.data_dir, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Opens the splits needed for ``stage`` (fit, validate, test, predict or None for all)."""
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            official_train = load_split(self.spec.name, train=True, data_dir=self.data_dir)
            train_indices, val_indices = split_indices(len(official_train), self.val_size, self.split_seed)  # type: ignore[arg-type]
            train_indices = train_indices[: self.train_size]
            eval_key = self._memo_key(official_train, train=True, transform=self.eval_transform)
            train_key = None if self.train_augment else eval_key  # random augmentations are never kept
            self.splits["train"] = TransformedSubset(official_train, train_indices, self.train_transform, train_key)
            self.splits["val"] = TransformedSubset(official_train, val_indices, self.eval_transform, eval_key)
            self.classes = list(official_train.classes)  # type: ignore[attr-defined]
        if stage in (None, "test", "predict") and "test" not in self.splits:
            official_test = load_split(self.spec.name, train=False, data_dir=self.data_dir)
            test_key = self._memo_key(official_test, train=False, transform=self.eval_transform)
            test_indices = range(len(official_test))  # type: ignore[arg-type]
            self.splits["test"] = TransformedSubset(official_test, test_indices, self.eval_transform, test_key)
            self.classes = list(official_test.classes)  # type: ignore[attr-defined]

    def _memo_key(self, source: object, *, train: bool, transform: object) -> str | None:
        """The key under which the transformed images of ``source`` are kept in memory; None: ``cache_images`` off."""
        if not self.cache_images:
            return None
        return f"{self.spec.name}|{getattr(source, 'root', '')}|train={train}|{len(source)}|{transform!r}"  # type: ignore[arg-type]

    @property
    def num_classes(self) -> int:
        """Number of classes (known after :meth:`setup` for image folders)."""
        return self.spec.num_classes if self.spec.num_classes is not None else len(self.classes)

    @property
    def num_channels(self) -> int:
        """Channels of the images the loaders give (after any replication)."""
        return self.channels if self.channels is not None else len(self.spec.mean)

    def _loader(self, split: str, shuffle: bool) -> DataLoader[tuple[torch.Tensor, int]]:
        """A resumable loader: Lightning stores its position (and shuffle state) in mid-epoch checkpoints.

        Generators of its own, seeded from the global seed, draw the shuffles and worker seeds, so iterating never
        moves the global random state that dropout and MixUp use; the sampler's generator is part of the loader's
        state, so a resumed run shuffles as the original did.
        """
        if split not in self.splits:
            raise RuntimeError(f"split {split!r} is not set up; call setup() first")
        dataset = self.splits[split]
        trainer = self.trainer
        # The global seed (seed_everything), not the global generator's state; a loader rebuilt for a later epoch
        # (reload_dataloaders_every_n_epochs) shuffles differently.
        seed = torch.initial_seed() + (trainer.current_epoch if trainer is not None else 0)
        # Under DDP, Lightning's DistributedSampler shuffles by (seed, epoch), which a resumed loader fast-forwards
        # exactly; it would wrap a custom sampler instead, without saving the wrapper's position.
        distributed = trainer is not None and trainer.world_size > 1
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else None
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle if distributed else None,
            sampler=None if distributed else sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(seed),
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


def _check_config(
    batch_size: int, num_workers: int | None, val_size: int | float | None, train_size: int | None
) -> None:
    """Rejects invalid values before any data is read, naming the config key."""
    checks = [
        ("batch_size", batch_size, batch_size >= 1, "a positive integer"),
        ("num_workers", num_workers, num_workers is None or num_workers >= 0, ">= 0 or null"),
        ("train_size", train_size, train_size is None or train_size >= 1, "a positive integer or null"),
        (
            "val_size",
            val_size,
            val_size is None or (val_size >= 0 if isinstance(val_size, int) else 0 < val_size < 1),
            "a count >= 0, a fraction in (0, 1), or null",
        ),
    ]
    check_values("data", checks)
