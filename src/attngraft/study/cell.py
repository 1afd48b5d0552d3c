"""One run of a study cell: train it (cached features when its backbone is frozen), test it, measure it.

Each run writes into its own directory: ``metrics.csv`` and TensorBoard events (the training curves), the trained
network as ``weights.safetensors`` (a later cell's "pretrained" backbone) and, last, ``result.json`` (the table
row). A run without ``result.json`` did not finish; ``--resume`` runs it again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from attngraft._io import write_json
from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import AttngraftError, ConfigError
from attngraft.grafting.weights import save_weights
from attngraft.study.config import Run
from attngraft.study.measure import cpu_latency, model_costs
from attngraft.study.objects import AUGMENTATION, CALLBACK, build_objects
from attngraft.train.cache import FeatureCache, FeatureDataset
from attngraft.train.checkpoint import rebuild_network
from attngraft.train.module import ImageClassifier, class_logits
from attngraft.train.network import starts_from_imagenet
from attngraft.train.trainer import create_trainer

logger = logging.getLogger(__name__)
RESULT_FILE = "result.json"
WEIGHTS_FILE = "weights.safetensors"


class TestEveryEpoch(L.Callback):
    """Test accuracy after every epoch's validation, logged as ``test_acc_epoch`` and kept in :attr:`accuracies`.

    Reference tables often report the maximum test accuracy over epochs: the best epoch picked on the test set, an
    optimistic figure. The network runs on images (also while its head trains on cached features).
    """

    def __init__(self, datamodule: ImageDataModule) -> None:
        self.datamodule = datamodule
        self.accuracies: list[float] = []

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.datamodule.setup("test")

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        assert isinstance(pl_module, ImageClassifier)
        correct = total = 0
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            loader = self.datamodule.test_dataloader()
            for images, labels in itertools.islice(loader, _batch_limit(trainer.limit_test_batches, len(loader))):
                logits = class_logits(pl_module.network(images.to(pl_module.device)))
                correct += int((logits.argmax(-1).cpu() == labels).sum())
                total += len(labels)
        pl_module.train(was_training)
        self.accuracies.append(correct / max(total, 1))
        pl_module.log("test_acc_epoch", self.accuracies[-1])


def _batch_limit(limit: int | float | None, batches: int) -> int:
    """Batches a Trainer's ``limit_*_batches`` (a count or a fraction) allows out of ``batches``."""
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def run_fingerprint(run: Run, backbone_weights: str | None, measure: object = None) -> str:
    """A hash of everything that decides a run's row: cell, dataset, seed, backbone weights, measure settings.

    A finished run is reused by ``--resume`` only when its fingerprint is unchanged.
    """
    description = json.dumps(
        {
            # The row's label and attention columns are display only; where the files are read does not matter.
            "cell": {key: value for key, value in vars(run.cell).items() if key not in ("label", "attention", "data")},
            "data": {key: value for key, value in run.cell.data.items() if key != "data_dir"},
            "dataset": run.dataset,
            "seed": run.seed,
            "backbone_weights": backbone_weights,
            "measure": measure,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(description.encode()).hexdigest()[:16]


def finished_result(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    """The row of a finished run in ``directory`` with this fingerprint, else None."""
    path = directory / RESULT_FILE
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict) or content.get("fingerprint") != fingerprint:
        return None
    row = content.get("row")
    return row if isinstance(row, dict) else None


def train_run(
    run: Run,
    directory: Path,
    *,
    backbone_weights: str | None,
    batch_sizes: list[int],
    repeats: int,
    fingerprint: str,
    test_every_epoch: bool = False,
    feature_store: dict[str, FeatureDataset] | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, Any]:
    """Trains, tests and measures one run; writes its files into ``directory`` and returns its table row.

    Args:
        run: The cell, dataset and seed.
        directory: The run's directory (created).
        backbone_weights: Weights file for the cell's backbone (a pretrained cell), or None.
        batch_sizes: CPU latency batch sizes.
        repeats: Timed repetitions per latency measurement.
        fingerprint: :func:`run_fingerprint`, stored with the row.
        test_every_epoch: Also test after every epoch; the row gets ``max_test_acc``.
        feature_store: Cached backbone features shared with the study's other runs (see :class:`FeatureCache`).
        callbacks: More callbacks for the fit's Trainer (e.g. the run's progress line).
    """
    if directory.exists():  # an unfinished or outdated run: none of its files may outlive the retraining
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    L.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = _datamodule(run, backbone_weights)
    if datamodule.spec.num_classes is None:  # image folders: the classes are known once the files are read
        datamodule.prepare_data()
        datamodule.setup("fit")
    model = _classifier(run, datamodule, backbone_weights)
    cache = FeatureCache(mode="auto", store=feature_store)
    fitted = _fit_and_test(run, directory, model, datamodule, cache, test_every_epoch, callbacks)
    row = _describe(run, backbone_weights) | fitted
    save_weights(model.network, directory / WEIGHTS_FILE)
    input_shape = tuple(datamodule.splits["test"][0][0].shape)  # (C, H, W)
    network = model.network.cpu()
    row |= model_costs(network, input_shape) | cpu_latency(network, input_shape, batch_sizes, repeats)
    row["input"] = "x".join(str(size) for size in input_shape)
    write_json(directory / RESULT_FILE, {"fingerprint": fingerprint, "backbone_weights": backbone_weights, "row": row})
    return row


def _describe(run: Run, backbone_weights: str | None) -> dict[str, Any]:
    """The row's identifying columns."""
    cell = run.cell
    return {
        "study_cell": cell.name,
        "dataset": run.dataset,
        "seed": run.seed,
        "model": cell.label,
        "attention": cell.attention,
        "pretrained": "yes" if backbone_weights else "no",
        "epochs": cell.epochs,
    }


def _fit_and_test(
    run: Run,
    directory: Path,
    model: ImageClassifier,
    datamodule: ImageDataModule,
    cache: FeatureCache,
    test_every_epoch: bool,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, Any]:
    """Fits ``model``, tests its final weights; the accuracy, loss and training-time columns."""
    tracker = TestEveryEpoch(datamodule) if test_every_epoch else None
    trainer = _trainer(run, directory, cache, *([tracker] if tracker else []), *callbacks)
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule)
    except SystemExit:
        # Lightning turns Ctrl-C into "ignore SIGINT, exit(1)"; a study wants its KeyboardInterrupt back.
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
    train_time = time.perf_counter() - start
    val_acc = float(trainer.callback_metrics.get("val_acc", math.nan))
    tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    columns = {"test_acc": float(tested["test_acc"]), "test_loss": float(tested["test_loss"])}
    if tracker is not None:
        columns["max_test_acc"] = max([*tracker.accuracies, columns["test_acc"]])
    return columns | {
        "train_images": len(datamodule.splits["train"]),  # type: ignore[arg-type]
        "val_acc": val_acc,
        "train_time_s": train_time,
        "cached_features": cache.active,
        "device": trainer.strategy.root_device.type,
    }


def trained_network(run: Run, directory: Path) -> tuple[torch.nn.Module, ImageDataModule]:
    """A finished run's network (its ``weights.safetensors``, in eval mode) and its data module (not set up)."""
    result = json.loads((directory / RESULT_FILE).read_text())
    datamodule = _datamodule(run, result.get("backbone_weights"))
    if datamodule.spec.num_classes is None:
        datamodule.prepare_data()
        datamodule.setup("test")
    # Built without reading any weights file (backbone, teacher): every weight comes from the run's own file.
    network = rebuild_network(
        run.cell.network,
        num_classes=datamodule.num_classes,
        in_chans=datamodule.num_channels,
        weights=directory / WEIGHTS_FILE,
    )
    return network, datamodule


def check_run(run: Run, backbone_weights: str | None = None) -> None:
    """Builds the run's data module, network and trainer without training or reading data.

    A bad setting in any cell then stops the study before the first run trains. Backbones get random weights here,
    or ``backbone_weights`` (a file, for a pretrained cell), which are then checked key by key.
    """
    datamodule = _datamodule(run)
    if datamodule.spec.num_classes is not None:  # image folders know their classes only after reading
        _classifier(run, datamodule, backbone_weights if run.cell.pretrained is not None else None)
    with tempfile.TemporaryDirectory() as directory:
        _trainer(run, Path(directory), FeatureCache(mode="off"))


@contextmanager
def _config_errors(where: str) -> Iterator[None]:
    """Turns what a constructor raises for a bad setting into a ConfigError naming ``where`` (ours pass through)."""
    try:
        yield
    except AttngraftError:
        raise
    except (TypeError, ValueError, MisconfigurationException) as error:
        raise ConfigError(f"{where}: {error}") from None


def _datamodule(run: Run, backbone_weights: str | None = None) -> ImageDataModule:
    """The cell's data; ``normalize: auto`` takes ImageNet's statistics when the backbone gets ImageNet weights."""
    where = f"cell {run.cell.name}.data"
    with _config_errors(where):
        datamodule = ImageDataModule(**_data_arguments(run.cell.data, where))
    network = run.cell.network
    if backbone_weights is not None and isinstance(network, Mapping):
        network = {**network, "weights": backbone_weights}
    datamodule.adopt_backbone_normalization(imagenet_weights=starts_from_imagenet(network))
    return datamodule


def _classifier(run: Run, datamodule: ImageDataModule, backbone_weights: str | None) -> ImageClassifier:
    cell = run.cell
    # An unknown training key, or a network option a builder rejects.
    with _config_errors(f"cell {cell.name}.network/training"):
        return ImageClassifier(
            cell.network,
            num_classes=datamodule.num_classes,
            in_chans=datamodule.num_channels,
            backbone_weights=backbone_weights,
            **cell.training,
        )


def _trainer(run: Run, directory: Path, *callbacks: L.Callback) -> L.Trainer:
    options: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "run_directory": directory,
        "callbacks": list(callbacks),
        "enable_checkpointing": False,  # a run is redone whole; its weights are saved at the end
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(directory),
        **run.cell.trainer,
        "max_epochs": run.cell.epochs,
    }
    where = f"cell {run.cell.name}.trainer"
    options["callbacks"] = [
        *callbacks,
        *build_objects(run.cell.trainer.get("callbacks"), f"{where}.callbacks", CALLBACK),
    ]
    with _config_errors(where):
        return create_trainer(**options)


def _data_arguments(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The data module's arguments, with ``train_augment`` entries (``{class_path, init_args}``) built."""
    arguments = dict(data)
    arguments["train_augment"] = build_objects(arguments.get("train_augment"), f"{where}.train_augment", AUGMENTATION)
    return arguments
