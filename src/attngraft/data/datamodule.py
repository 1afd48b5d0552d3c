"""LightningDataModule over any registered dataset: seeded train/val split, test set, transforms."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from attngraft import validation
from attngraft.data.datasets import SplitPart, get_dataset_spec, locate_dataset, split_dataset
from attngraft.data.sampling import SeededRandomSampler
from attngraft.data.subset import TransformedSubset
from attngraft.data.transforms import Normalization, build_transform, normalization_statistics, resolve_normalization
from attngraft.errors import ConfigError

# torchdata 0.11 calls a torch API that torch 2.14 deprecates, once per loader iteration; nothing for users to fix.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def default_num_workers() -> int:
    """Data-loading workers: one per available core, at most 4."""
    return min(4, len(os.sched_getaffinity(0)))


logger = logging.getLogger(__name__)


class ImageDataModule(L.LightningDataModule):
    """Train/val/test loaders for a registered dataset.

    For a dataset with official train and test splits, the validation set is a seeded subset of the official
    training set and the test set is the official test set. A flat image folder (``<class>/<image>``) is split into
    train, val and test by ``val_size`` and ``test_size``. Image folders are split class by class (every class in
    every split); see :func:`attngraft.data.split_dataset`.

    Args:
        dataset: Registered dataset name (see ``attngraft.data.list_datasets()``).
        data_dir: Directory searched first for the files.
        batch_size: Images per batch.
        num_workers: Loader processes; default one per core (at most 4).
        val_size: Validation images: a count, or a fraction of the official train set (of all the images of a flat
            image folder); default the dataset's (5000 for the registered datasets, 0.1 for image folders).
        test_size: Test images of a flat image folder: a count or a fraction of all its images; default 0.1. Only
            for a flat image folder: the other datasets have their own test split.
        train_size: Train on only this many of the remaining images (quick runs, tests); default all.
        split_seed: Seed of the train/val(/test) split (independent of the training seed).
        image_size: Resize images to this square side (e.g. 224 for ImageNet backbones); required for image
            folders, whose images may have any size.
        channels: Channels of the images the loaders give: 1 (colour images become grey by luma) or 3 (grey images
            are replicated, for RGB backbones); default the dataset's own (3 for image folders).
        normalize: ``"dataset"``: the dataset's mean and std (for image folders, ImageNet's); ``"imagenet"``:
            ImageNet's (one channel: the averages of its three); ``"none"``: pixels in [0, 1]. ``"auto"``
            (default): ``"dataset"``, unless the training room makes it ``"imagenet"`` for a backbone with ImageNet
            weights (:meth:`adopt_backbone_normalization`). True and False mean ``"dataset"`` and ``"none"``.
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
        test_size: int | float | None = None,
        train_size: int | None = None,
        split_seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        normalize: bool | Normalization = "auto",
        download: bool = False,
        train_augment: Sequence[torch.nn.Module] = (),
        cache_images: bool = True,
    ) -> None:
        super().__init__()
        val_size, test_size = _as_count(val_size), _as_count(test_size)
        self.spec = get_dataset_spec(dataset)
        _check_config(batch_size, num_workers, val_size, test_size, train_size, image_size, channels)
        if image_size is None and self.spec.image_shape is None:
            raise ConfigError(
                f"data.image_size null: expected a positive integer for {dataset}, whose images may have any size "
                "(e.g. 224 for ImageNet backbones)"
            )
        self.normalization = resolve_normalization(normalize)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.val_size = self.spec.val_size if val_size is None else val_size
        self.test_size = test_size
        self.train_size = train_size
        self.split_seed = split_seed
        self.channels = channels
        self.image_size = image_size
        self.normalize = normalize
        self.train_augment = tuple(train_augment)
        self.cache_images = cache_images
        self.download = download
        self._build_transforms()
        # Split name → dataset of (input, label); a feature cache may swap in precomputed backbone features.
        self.splits: dict[str, Dataset[tuple[torch.Tensor, int]]] = {}
        self.classes: list[str] = []

    def _build_transforms(self) -> None:
        mean, std = self.statistics
        transform = partial(
            build_transform,
            mean,
            std,
            image_size=self.image_size,
            channels=self.num_channels,
            source_channels=self.spec.image_shape[0] if self.spec.image_shape is not None else None,
            normalize=self.normalization != "none",
        )
        self.train_transform = transform(augment=self.train_augment)
        self.eval_transform = transform()

    @property
    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) the images are normalised with, ((0.0,), (1.0,)) without normalisation.

        As given (one value per channel of the dataset's or ImageNet's statistics); the transform fits them to
        :attr:`num_channels` (:func:`attngraft.data.transforms.fit_statistics`).
        """
        statistics = normalization_statistics(self.normalization, self.spec.mean, self.spec.std)
        return statistics if statistics is not None else ((0.0,), (1.0,))

    def adopt_backbone_normalization(self, imagenet_weights: bool) -> str:
        """Resolves ``normalize="auto"`` for the backbone: ImageNet's statistics when it has ImageNet weights.

        Other settings are kept. Call it before :meth:`setup`.

        Returns:
            The normalisation now in use: ``"dataset"``, ``"imagenet"`` or ``"none"``.
        """
        if self.splits:
            raise RuntimeError("adopt_backbone_normalization must be called before setup()")
        self.normalization = resolve_normalization(self.normalize, imagenet_weights=imagenet_weights)
        self._build_transforms()
        return self.normalization

    def prepare_data(self) -> None:
        """Finds (and if needed stages or downloads) the files; runs once per node."""
        locate_dataset(self.spec.name, data_dir=self.data_dir, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Opens the splits needed for ``stage`` (fit, validate, test, predict or None for all)."""
        wanted: list[str] = []
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            wanted += ["train", "val"]
        if stage in (None, "test", "predict") and "test" not in self.splits:
            wanted.append("test")
        if not wanted:
            return
        parts = split_dataset(
            self.spec.name,
            tuple(wanted),
            data_dir=self.data_dir,
            val_size=self.val_size,
            test_size=self.test_size,
            seed=self.split_seed,
        )
        train = parts.get("train")
        if train is not None and self.train_size is not None and self.train_size > len(train.indices):
            logger.warning(
                "data.train_size %d: only %d training images are left after the validation split; using them all",
                self.train_size,
                len(train.indices),
            )
        for split, part in parts.items():
            training = split == "train"
            key = self._memo_key(part)
            augmented = training and bool(self.train_augment)
            self.splits[split] = TransformedSubset(
                part.dataset,
                part.indices[: self.train_size] if training else part.indices,
                self.train_transform if training else self.eval_transform,
                None if augmented else key,  # random augmentations are never kept
                random_transform=augmented,
            )
            self.classes = list(part.dataset.classes)

    def _memo_key(self, part: SplitPart) -> str | None:
        """The key under which the evaluation-transformed images of ``part`` are kept; None: ``cache_images`` off."""
        if not self.cache_images:
            return None
        source = part.dataset
        return f"{self.spec.name}|{getattr(source, 'root', '')}|{part.part}|{len(source)}|{self.eval_transform!r}"

    @property
    def num_classes(self) -> int:
        """Number of classes; an image folder's are its class folders, listed (not read) on first use."""
        if self.spec.num_classes is not None:
            return self.spec.num_classes
        if not self.classes:
            located = locate_dataset(self.spec.name, data_dir=self.data_dir, download=self.download)
            self.classes = self.spec.source.class_names(located.root) or []
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the images the loaders give, when every image has it (None: sizes vary)."""
        if self.image_size is not None:
            return (self.num_channels, self.image_size, self.image_size)
        if self.spec.image_shape is not None:
            return (self.num_channels, *self.spec.image_shape[1:])
        return None

    @property
    def num_channels(self) -> int:
        """Channels of the images the loaders give (after any conversion)."""
        return self.channels if self.channels is not None else self.spec.channels

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
        sampler = self._sampler(dataset, seed) if shuffle else None
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

    @staticmethod
    def _sampler(dataset: Dataset[Any], seed: int) -> Sampler[Any]:
        """A resumable shuffle; items of a random transform also get their augmentation seeds (exact resumption)."""
        generator = torch.Generator().manual_seed(seed)
        if getattr(dataset, "random_transform", False):
            return SeededRandomSampler(dataset, generator)  # type: ignore[arg-type]
        return RandomSampler(dataset, generator=generator)

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]] | list[Any]:
        """Validation batches in a fixed order; none (an empty list: Lightning skips validation) with val_size 0."""
        if "val" in self.splits and len(self.splits["val"]) == 0:  # type: ignore[arg-type]
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """Official test-set batches in a fixed order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        """The test set, for ``predict``."""
        return self._loader("test", shuffle=False)


def _as_count(size: int | float | None) -> int | float | None:
    """A count written as a float (YAML or a command line: ``5000.0``) becomes an int; fractions stay."""
    if isinstance(size, float) and size.is_integer() and size >= 0:  # 0.0 too: no validation images
        return int(size)
    return size


def _check_config(
    batch_size: int,
    num_workers: int | None,
    val_size: int | float | None,
    test_size: int | float | None,
    train_size: int | None,
    image_size: int | None,
    channels: int | None,
) -> None:
    """Rejects invalid values before any data is read, naming the config key."""
    validation.positive_int(batch_size, "data.batch_size")
    if num_workers is not None:
        validation.non_negative_int(num_workers, "data.num_workers")
    for key, count in (("train_size", train_size), ("image_size", image_size)):
        if count is not None:
            validation.positive_int(count, f"data.{key}")
    for key, size in (("val_size", val_size), ("test_size", test_size)):
        if size is not None:
            validation.fraction_or_count(size, f"data.{key}")
    if channels is not None:
        validation.choice(channels, "data.channels", (1, 3), words="1 (grey) or 3 (RGB)")
    if isinstance(val_size, float) and isinstance(test_size, float) and val_size + test_size >= 1:
        raise ConfigError(f"data.val_size + data.test_size {val_size} + {test_size}: expected a sum below 1")
