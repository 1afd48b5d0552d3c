"""The one trainer factory: ``attngraft fit`` (through LightningCLI) and the studies make their Trainer here.

What every attngraft run gets: TensorBoard and CSV logs in one run directory, the random state in every checkpoint
(:class:`~attngraft.train.callbacks.RandomState`, for exact resumption) and atomic checkpoint writes
(:class:`~attngraft.train.callbacks.AtomicCheckpointIO`). Everything else is the caller's Trainer options.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from attngraft.train.callbacks import AtomicCheckpointIO, RandomState

RUNS_DIR = "runs"


def run_loggers(root: str | Path, name: str = "", version: int | str | None = None) -> list[Any]:
    """TensorBoard and CSV loggers writing into one ``root/name/version_<n>`` directory (the next, by default).

    ``name=""`` and ``version=""`` write into ``root`` itself.
    """
    tensorboard = TensorBoardLogger(root, name=name, version=version, default_hp_metric=False)
    return [tensorboard, CSVLogger(root, name=name, version=tensorboard.version)]


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
