"""Callbacks Lightning does not ship: random-state checkpointing for exact resumption."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override


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
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
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
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state), gauss))
