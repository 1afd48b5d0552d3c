"""The one trainer factory: ``attngraft fit`` (through LightningCLI) and the studies make their Trainer here.

What every attngraft run gets: TensorBoard and CSV logs in one run directory, the random state in every checkpoint
(:class:`~attngraft.train.callbacks.RandomState`, for exact resumption) and atomic checkpoint writes
(:class:`~attngraft.train.callbacks.AtomicCheckpointIO`). Everything else is the caller's Trainer options.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from typing_extensions import override

from attngraft._io import atomic_path
from attngraft.train.callbacks import AtomicCheckpointIO, RandomState

RUNS_DIR = "runs"
logger = logging.getLogger(__name__)

_REPEATING = ("lightning.", "attngraft.data.")
"""Loggers whose ``INFO`` records describe the setup (devices, limits, where data lives), not an event."""
UNACTIONABLE_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",  # a resumed run writes into its own directory again
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning
    r"Total length of `list` across ranks is zero",  # data.val_size 0: no validation loader, on purpose
)
"""Warnings of Lightning's that users cannot act on in an attngraft run."""


class SetupLogFilter(logging.Filter):
    """Lightning's advertising tips dropped; each setup line (devices, where the data was found) written once.

    Every Trainer logs "GPU available", "TPU available" and a tip, and every data module where it found its files;
    a command or a study builds several. Warnings and errors always pass. ``dropped``: more message prefixes to drop.
    """

    dropped: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not record.name.startswith(_REPEATING):
            return True
        message = record.getMessage()
        if message.lstrip().startswith(("💡", "Tip:")) or message.startswith(self.dropped) or message in self._seen:
            return False
        self._seen.add(message)
        return True


@contextmanager
def quiet_console() -> Iterator[None]:
    """Quiets a training command's console: setup lines once, no tips, no warnings users cannot act on.

    :class:`SetupLogFilter` goes on the console handlers of Lightning and attngraft, and
    :data:`UNACTIONABLE_WARNINGS` are ignored, while the block runs.
    """
    setup_filter = SetupLogFilter()
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "attngraft")
    handlers = [handler for name in names for handler in logging.getLogger(name).handlers]
    for handler in handlers:
        handler.addFilter(setup_filter)
    try:
        with warnings.catch_warnings():
            for message in UNACTIONABLE_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(setup_filter)


def run_loggers(
    root: str | Path, name: str = "", version: int | str | None = None, *, resumed_step: int | None = None
) -> list[Any]:
    """TensorBoard and CSV loggers writing into one ``root/name/version_<n>`` directory (the next, by default).

    ``name=""`` and ``version=""`` write into ``root`` itself. ``resumed_step``: the run continues from a checkpoint
    taken at this global step, and its ``metrics.csv`` keeps the rows logged before that step.
    """
    tensorboard = TensorBoardLogger(root, name=name, version=version, default_hp_metric=False)
    return [tensorboard, RunCSVLogger(root, name=name, version=tensorboard.version, resumed_step=resumed_step)]


class RunCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run keeps its earlier rows.

    Lightning's writer deletes an existing ``metrics.csv`` (and warns whenever the directory is not empty, which it
    always is by then: the run's ``config.yaml`` is written first). Here a run resumed from a checkpoint taken at
    global step ``resumed_step`` keeps the rows logged before that step, which is what the resumed run would have
    written itself: the file then reads as one uninterrupted run's. Any other run starts a new file, as Lightning's.
    """

    def __init__(self, *args: Any, resumed_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumed_step = resumed_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer of ``metrics.csv`` and ``hparams.yaml``."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resumed_step)
        return cast(ExperimentWriter, self._experiment)


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resumed_step: int | None) -> None:
        self.resumed_step = resumed_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # replaces Lightning's delete-and-warn
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resumed_step is None:
            logger.warning("%s: a new run in this directory replaces its metrics.csv", path.parent)
            path.unlink()
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _logged_before(row, self.resumed_step)]
        self.metrics_keys = header
        with atomic_path(path) as temporary, temporary.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)


def _logged_before(row: dict[str, str], step: int) -> bool:
    """Whether a metrics.csv row was logged before global step ``step`` (rows without a step are kept)."""
    try:
        return int(row.get("step") or 0) < step
    except ValueError:
        return True


def create_trainer(
    *,
    logger: Any = True,
    callbacks: Sequence[Callback] | Callback | None = (),
    plugins: Sequence[Any] | Any | None = (),
    run_directory: str | Path | None = None,
    **options: Any,
) -> L.Trainer:
    """A Lightning Trainer with attngraft's run defaults and the caller's ``options``.

    Args:
        logger: ``True``/None: TensorBoard and CSV logs into ``run_directory`` (default: the next
            ``version_<n>`` under ``default_root_dir``/"default"); False: none; else the loggers given.
        callbacks: The run's callbacks; :class:`RandomState` is added unless one is there.
        plugins: Trainer plugins; :class:`AtomicCheckpointIO` is added unless a checkpoint IO plugin is there.
        run_directory: Where the default loggers write (exactly there).
        **options: Any other ``L.Trainer`` argument.
    """
    callbacks = _as_list(callbacks)
    if not any(isinstance(callback, RandomState) for callback in callbacks):
        callbacks.append(RandomState())
    plugins = _as_list(plugins)
    if not any(isinstance(plugin, L.pytorch.plugins.io.CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    if logger is None or logger is True:
        if run_directory is not None:
            logger = run_loggers(run_directory, name="", version="")
        else:
            logger = run_loggers(options.get("default_root_dir") or RUNS_DIR, name="default")
    return L.Trainer(logger=logger, callbacks=callbacks, plugins=plugins, **options)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
