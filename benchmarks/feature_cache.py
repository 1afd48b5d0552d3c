"""Epoch time of training a graft head on a frozen backbone, with and without the frozen-feature cache.

ResNet-18 (torchvision, random weights: speed does not depend on them) with a one-layer graph-attention head on
layer4, Fashion-MNIST resized to 64×64, batch 128, both runs in this process with the same seed. The uncached run
trains one epoch; the cached run trains two, the first of which computes the features. ``speedup`` compares an
uncached epoch with a cached epoch after the first (train + validation in both).

    python benchmarks/feature_cache.py [--json] [--train-size N] [--precision bf16-mixed] [--embed-dim 128]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import lightning as L
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine

from attngraft.data.datamodule import ImageDataModule
from attngraft.recipes import packaged_directory
from attngraft.train import FeatureCache, ImageClassifier

SPEC = packaged_directory() / "grafts" / "resnet18_graph_head.yaml"


class EpochTimer(L.Callback):
    """Wall time of each training epoch, its validation included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def fit(epochs: int, cache_mode: str, arguments: argparse.Namespace) -> tuple[list[float], float, float]:
    """(epoch seconds, seconds from fit start to the first epoch, final val_acc)."""
    L.seed_everything(0, verbose=False)
    spec = yaml.safe_load(SPEC.read_text())
    if arguments.embed_dim is not None:
        spec["graft"][0]["embed_dim"] = arguments.embed_dim
    module = ImageClassifier(spec, num_classes=10, in_chans=1, lr=1e-3)
    data = ImageDataModule(
        "fashion-mnist", batch_size=128, image_size=64, train_size=arguments.train_size, num_workers=arguments.workers
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="auto",
        max_epochs=epochs,
        precision=arguments.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[FeatureCache(cache_mode), timer],
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    setup = time.perf_counter() - start - sum(timer.seconds)
    return timer.seconds, setup, float(trainer.callback_metrics["val_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default: all 54,000)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: one per core, <= 4)")
    parser.add_argument("--embed-dim", type=int, default=None, help="head width (default: the spec's, 256)")
    arguments = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)

    uncached, _, uncached_acc = fit(1, "off", arguments)
    cached, setup, cached_acc = fit(2, "memory", arguments)
    result = {
        "benchmark": "feature_cache",
        "model": "torchvision/resnet18 + graph head on layer4 (64x64, frozen backbone)",
        "dataset": "fashion-mnist",
        "train_size": arguments.train_size or 54000,
        "precision": arguments.precision,
        "head_embed_dim": arguments.embed_dim or 256,
        "uncached_epoch_s": round(uncached[0], 2),
        "cached_first_epoch_s": round(cached[0], 2),
        "cache_build_s": round(setup, 2),
        "cached_epoch_s": round(cached[1], 2),
        "speedup": round(uncached[0] / cached[1], 1),
        "val_acc_uncached_1_epoch": round(uncached_acc, 4),
        "val_acc_cached_2_epochs": round(cached_acc, 4),
        "machine": machine(),
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:<26}{value}")


if __name__ == "__main__":
    main()
