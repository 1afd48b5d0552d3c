"""Callbacks used by the training tests' subprocesses (importable as ``tests.train.helpers``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    """Kills its own process with SIGKILL after optimiser step ``step`` (no cleanup, like a crash or OOM kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RankReport(L.Callback):
    """At the end of fit, writes each rank's weight digest and sample count to ``directory/rank<N>.json``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        report = {
            "world_size": trainer.world_size,
            "digest": digest.hexdigest(),
            "val_batches": trainer.num_val_batches,
            "val_acc": float(trainer.callback_metrics["val_acc"]),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
