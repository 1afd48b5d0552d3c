"""What Lightning does not ship: random-state checkpointing for exact resumption, atomic local checkpoint writes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from attngraft._io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes local checkpoints to a temporary file beside the destination, then renames it into place.

    Lightning's own writer stages the file in the system's temporary directory and moves it, which is a copy (not
    atomic) when that directory is on another file system; a kill mid-copy would leave a truncated ``last.ckpt``.
    Remote paths (``s3://``...) keep Lightning's writer.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        protocol = get_filesystem(path).protocol if isinstance(path, str | Path) else ()
        if "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(Path(path)) as temporary:
            torch.save(checkpoint, temporary)


class RandomState(L.Callback):
    """Saves the global random states (torch, CUDA, NumPy, Python) in every checkpoint and restores them on resume.

    Lightning restores the loaders' positions but not the global generators that dropout, stochastic depth and
    MixUp draw from, so a resumed run would otherwise diverge from an uninterrupted one. The states are put back
    just before the first training batch after the restore, where the uninterrupted run stood after saving.
    The checkpoint holds only tensors and plain numbers, so it loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
        version, python_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            # This process's device only: a checkpoint (written by rank 0) restores every rank to rank 0's states, as
            # seed_everything starts them all from the same seed.
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached_gaussian],
            "python": [version, list(python_state), gauss],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        if len(state["cuda"]) and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state), gauss))


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict``'s class probabilities to ``predictions.csv`` in the run directory (atomically).

    Columns: ``index`` (position in the predicted split), ``predicted`` (class), ``probability`` (of that class),
    then ``p0 … p<k-1>``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    @override
    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else batch_indices
        if not batches:
            return
        probabilities = torch.cat([batch.float().cpu() for batch in batches])  # (N, num_classes)
        order = [index for batch in indices for index in batch] if indices else range(len(probabilities))
        header = ["index", "predicted", "probability", *(f"p{label}" for label in range(probabilities.shape[1]))]
        top, predicted = probabilities.max(dim=1)
        rows = [",".join(header)]
        for index, row, label, probability in zip(
            order, probabilities.tolist(), predicted.tolist(), top.tolist(), strict=True
        ):
            rows.append(",".join([str(index), str(label), f"{probability:.6f}", *(f"{value:.6f}" for value in row)]))
        path = Path(trainer.log_dir or ".") / "predictions.csv"
        with atomic_path(path) as temporary:
            temporary.write_text("\n".join(rows) + "\n")
