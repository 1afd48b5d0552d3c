"""Frozen-feature caching: run a frozen backbone once over the data, then train only the grafted head on features.

When the backbone is frozen and nothing random reaches its input (no augmentation, no MixUp/CutMix), every epoch
would recompute the same backbone features. :class:`FeatureCache` computes them when ``fit`` sets up (in the
trainer's precision, on its device), keeps them in memory or on disk (keyed by a hash of the backbone weights, the
dataset, its indices and transform, and the precision), and swaps them in for the images; the module then runs only
its head. Same seed, same logits: the loaders draw the same shuffles, and the head sees the same inputs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import safetensors.torch
import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from attngraft._io import atomic_path
from attngraft.data import cache_dir
from attngraft.errors import ConfigError
from attngraft.train.module import ImageClassifier

logger = logging.getLogger(__name__)
MODES = ("auto", "memory", "disk", "off")
CACHED_SPLITS = ("train", "val")
STORE_ENTRIES = len(CACHED_SPLITS)  # a shared store keeps one backbone's features
Encoder = Callable[[torch.Tensor], torch.Tensor]


class FeatureDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Precomputed features and their labels.

    Shape:
        - features: (N, *feature_shape); labels: (N,).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} features but {len(labels)} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


class FeatureCache(L.Callback):
    """Trains a grafted head on cached backbone features when the backbone is frozen.

    Args:
        mode: "auto" (memory when possible, otherwise a logged reason and ordinary training), "memory", "disk"
            (reused across runs), or "off". "memory" and "disk" fail when caching would change the results.
        directory: Where "disk" keeps features; default ``~/.cache/attngraft/features``.
        batch_size: Images per batch while computing features.
        store: Features kept in this process by cache key, shared by the callbacks given the same dict (e.g. the
            cells of a study that train heads on one frozen backbone): the last two splits' features stay.
    """

    def __init__(
        self,
        mode: str = "auto",
        directory: str | None = None,
        batch_size: int = 256,
        store: dict[str, FeatureDataset] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"feature_cache.mode: expected one of {list(MODES)}, got {mode!r}")
        if batch_size < 1:
            raise ConfigError(f"feature_cache.batch_size: expected a positive integer, got {batch_size}")
        self.mode = mode
        self.directory = Path(directory) if directory is not None else cache_dir() / "features"
        self.batch_size = batch_size
        self.store = store
        self._originals: dict[str, Dataset[Any]] = {}
        self._num_workers: int | None = None
        self.active = False  # whether the last fit trained on cached features
        self.reason = ""  # why it did not, when it did not

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Computes the features before Lightning builds the loaders (it does so to count steps for schedules)."""
        if stage != "fit":
            return
        self.active, self.reason = False, "feature_cache.mode is off"
        if self.mode == "off":
            return
        reason, split = self._blocker(trainer, pl_module)
        self.reason = reason
        if split is None:
            if self.mode != "auto":
                raise ConfigError(f"feature_cache.mode {self.mode}: cannot cache features: {reason}")
            logger.info("feature cache off: %s", reason)
            return
        datamodule = _datamodule(trainer)
        encoder, tail = split
        for name in CACHED_SPLITS:
            dataset = datamodule.splits[name]
            self._originals[name] = dataset
            datamodule.splits[name] = self._features(trainer, pl_module, encoder, dataset, name)
        # Features in memory need no loader processes: their start-up and copies would cost more than the head.
        self._num_workers = getattr(datamodule, "num_workers", None)
        if self._num_workers is not None:
            datamodule.num_workers = 0
        assert isinstance(pl_module, ImageClassifier)
        pl_module.use_cached_features(tail)
        self.active = True
        logger.info("feature cache on: training the head on cached backbone features")

    def _blocker(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[str, tuple[Encoder, torch.nn.Module] | None]:
        """(why features cannot be cached, None) or ("", (the encoder, the tail))."""
        if not isinstance(pl_module, ImageClassifier):
            return f"{type(pl_module).__name__} is not an ImageClassifier", None
        datamodule = _datamodule(trainer)
        if not isinstance(getattr(datamodule, "splits", None), dict) or not all(
            split in datamodule.splits for split in CACHED_SPLITS
        ):
            return "the data module does not expose its train/val splits", None
        if getattr(datamodule, "train_augment", ()):
            return "training augmentation changes the backbone's input every epoch", None
        precision = str(trainer.precision)
        if precision != "32-true" and not precision.endswith("-mixed"):
            # Lightning converts the module to this precision after setup, where the features are computed.
            return f"precision {precision}: features are computed in 32-true or mixed precision only", None
        split = pl_module.feature_split()
        if isinstance(split, str):
            return split, None
        return "", split

    def _features(
        self, trainer: L.Trainer, pl_module: L.LightningModule, encoder: Encoder, dataset: Dataset[Any], split: str
    ) -> FeatureDataset:
        if self.mode != "disk" and self.store is None:
            return self._compute(trainer, pl_module, encoder, dataset)
        key = _cache_key(pl_module, dataset, str(trainer.precision), trainer.strategy.root_device.type)
        if self.mode != "disk":
            return self._stored(key, lambda: self._compute(trainer, pl_module, encoder, dataset), split)
        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            logger.info("feature cache: reading %s features from %s", split, path)
            stored = safetensors.torch.load_file(path)
            return FeatureDataset(stored["features"], stored["labels"])
        features = self._compute(trainer, pl_module, encoder, dataset)
        if trainer.is_global_zero:
            with atomic_path(path) as temporary:
                safetensors.torch.save_file({"features": features.features, "labels": features.labels}, temporary)
        return features

    def _stored(self, key: str, compute: Callable[[], FeatureDataset], split: str) -> FeatureDataset:
        """The features under ``key`` in the shared store, computed (and stored) when missing."""
        assert self.store is not None
        if key in self.store:
            logger.info("feature cache: reusing %s features computed earlier in this process", split)
            return self.store[key]
        while len(self.store) >= STORE_ENTRIES:
            self.store.pop(next(iter(self.store)))  # the oldest
        self.store[key] = compute()
        return self.store[key]

    def _compute(
        self, trainer: L.Trainer, pl_module: L.LightningModule, encoder: Encoder, dataset: Dataset[Any]
    ) -> FeatureDataset:
        # A private generator: drawing the loader's seed must not move the global RNG that shuffles training.
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=getattr(_datamodule(trainer), "num_workers", 0),
            generator=torch.Generator(),
        )
        features, labels = [], []
        was_training = pl_module.training
        device = trainer.strategy.root_device
        pl_module.eval().to(device)  # Lightning would move it there next anyway
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for images, batch_labels in loader:
                features.append(encoder(images.to(device)).cpu())
                labels.append(torch.as_tensor(batch_labels))
        pl_module.train(was_training)
        return FeatureDataset(torch.cat(features), torch.cat(labels))  # (N, C, h, w), (N,)

    def _restore(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = _datamodule(trainer)
        for split, dataset in self._originals.items():
            datamodule.splits[split] = dataset
        if self._originals and self._num_workers is not None:
            datamodule.num_workers = self._num_workers
        self._originals = {}
        if isinstance(pl_module, ImageClassifier):
            pl_module.use_cached_features(None)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore(trainer, pl_module)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore(trainer, pl_module)


def _cache_key(pl_module: L.LightningModule, dataset: Dataset[Any], precision: str, device: str) -> str:
    """Hash of what determines the features: backbone weights and stage, data, precision, device type, torch."""
    digest = hashlib.sha256()
    assert isinstance(pl_module, ImageClassifier)
    for name, tensor in sorted(pl_module.network.state_dict().items()):
        if not name.startswith("grafts."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    source = getattr(dataset, "dataset", dataset)
    network = pl_module.network
    description = [
        str(getattr(network, "head_stage", "")),  # the same weights give other features at another stage
        # Grafts inside the backbone change its features; the head's own record does not.
        repr([record for record in getattr(network, "records", []) if record.mode != "head"]),
        str(sorted(getattr(network, "dropped", []))),
        repr(getattr(network, "backbone", network)),  # parameter-free parts (pooling, strides) change features too
        torch.__version__,
        type(source).__name__,
        str(getattr(source, "root", "")),
        str(len(source)),  # type: ignore[arg-type]
        repr(getattr(dataset, "indices", None)),
        repr(getattr(dataset, "transform", None)),
        precision,
        device,
    ]
    digest.update("\n".join(description).encode())
    return digest.hexdigest()[:32]


def _datamodule(trainer: L.Trainer) -> Any:
    """The trainer's data module (an attribute Lightning sets at fit time, untyped)."""
    return getattr(trainer, "datamodule", None)
