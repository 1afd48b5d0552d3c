"""Progress inside a study run, and a study log with one line per event.

:class:`CellProgress` shows where a long run stands (a tqdm line under the study's bar: epoch, step, loss and the
run's ETA) and logs one line per epoch. :class:`StudyLogFilter` keeps Lightning's tips out of ``study.log`` and
writes its per-Trainer banners ("GPU available: ...") once per study instead of once per Trainer.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import lightning as L
from typing_extensions import override

from attngraft.train.trainer import SetupLogFilter

logger = logging.getLogger(__name__)

EPOCH_METRICS = ("train_loss_epoch", "val_loss", "val_acc", "test_acc_epoch")
"""Metrics of the per-epoch log line, in this order, when the run logged them."""
REFRESH_SECONDS = 0.5
"""Least time between two redraws of the bar, and two reads of the training loss (a read waits for the device)."""


class CellProgress(L.Callback):
    """A tqdm line for one run (epoch, step, loss, elapsed, ETA) and one ``INFO`` log line per training epoch.

    The bar counts optimiser steps over the whole fit (``trainer.estimated_stepping_batches``), so its ETA is the
    run's, not the epoch's. It is placed below any bar already open (the study's bar over runs) and removed when the
    fit ends. The log line goes to this module's logger, i.e. ``study.log`` during a study.

    Args:
        label: What the bar and the log lines name, e.g. the run key ``fashion-mnist/base/seed0``.
        bar: Show the bar; False logs the epoch lines only (``--no-progress``).
        stream: Where the bar is drawn (default: ``sys.stderr`` at the time the fit starts).
    """

    def __init__(self, label: str, *, bar: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.bar = bar
        self.stream = stream
        self._progress: Any = None  # the tqdm bar of the running fit
        self._start = 0.0
        self._total_steps = math.inf
        self._last_refresh = -math.inf

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        self._start = time.perf_counter()
        self._last_refresh = -math.inf
        self._total_steps = float(trainer.estimated_stepping_batches)
        self._close()
        self._progress = tqdm(
            total=int(self._total_steps) if math.isfinite(self._total_steps) else None,
            desc=self.label,
            unit="step",
            leave=False,
            file=self.stream or sys.stderr,
            disable=not self.bar,
            dynamic_ncols=True,
            mininterval=REFRESH_SECONDS,
        )
        self._progress.set_postfix_str(self._epoch(trainer), refresh=True)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._progress is None or self._progress.disable:
            return
        now = time.perf_counter()
        if now - self._last_refresh >= REFRESH_SECONDS:
            self._last_refresh = now
            loss = _loss(outputs)
            postfix = self._epoch(trainer) + (f", loss {loss:.4f}" if loss is not None else "")
            self._progress.set_postfix_str(postfix, refresh=False)
        self._progress.update(trainer.global_step - self._progress.n)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        parts = [self._epoch(trainer)]
        parts += [f"{name} {float(metrics[name]):.4f}" for name in EPOCH_METRICS if name in metrics]
        elapsed = time.perf_counter() - self._start
        timing = f"{_duration(elapsed)} elapsed"
        done = trainer.global_step / self._total_steps if 0 < self._total_steps < math.inf else 0.0
        if 0 < done < 1:
            timing += f", ETA {_duration(elapsed * (1 - done) / done)}"
        logger.info("%s: %s; %s", self.label, ", ".join(parts), timing)
        if self._progress is not None:  # the epoch's figures stay on the bar until the next step's redraw
            self._progress.set_postfix_str(", ".join(parts), refresh=True)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    @staticmethod
    def _epoch(trainer: L.Trainer) -> str:
        """``epoch 3/10`` (1-based; ``epoch 3`` when the fit has no epoch limit)."""
        epoch = f"epoch {trainer.current_epoch + 1}"
        return f"{epoch}/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else epoch


def _loss(outputs: Any) -> float | None:
    """The training step's loss from what ``training_step`` returned (a tensor, or a mapping with ``loss``)."""
    value: Any = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return float(value.item()) if hasattr(value, "item") else None


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


_DROPPED = ("`Trainer.fit` stopped: `max_epochs=", "`Trainer.fit` stopped: `max_steps=")
"""Lightning's normal end of a fit: the last epoch line of :class:`CellProgress` says so already."""


class StudyLogFilter(SetupLogFilter):
    """One line per event in ``study.log``: Lightning's tips and normal-stop notes dropped, setup banners once.

    A study builds a Trainer and a data module per run (twice: one check before training), so their setup lines
    would repeat for every run. Warnings and errors always pass.
    """

    dropped = _DROPPED
