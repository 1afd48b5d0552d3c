"""LightningCLI glue: ``attngraft fit|validate|test|predict --config RECIPE.yaml`` and ``attngraft lr-find``.

Always on (configurable under their keys): ``checkpoint`` (ModelCheckpoint: best ``val_acc``),
``last_checkpoint`` (``last.ckpt`` every epoch, or every N steps with ``--last_checkpoint.every_n_train_steps N``),
``lr_monitor`` (LearningRateMonitor) and ``feature_cache`` (FeatureCache, "auto"); the random state goes into every
checkpoint. Runs log to TensorBoard and CSV under ``runs/<run_name>/version_<n>/``, beside the resolved
``config.yaml``. Anything else (SWA, early stopping, gradient accumulation, other loggers) is added under
``trainer.callbacks``/``trainer.logger`` in the recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.tuner.tuning import Tuner
from typing_extensions import override

from attngraft._io import atomic_path
from attngraft.data import resolve_normalization
from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError
from attngraft.recipes import recipe_arguments
from attngraft.train.cache import FeatureCache
from attngraft.train.callbacks import PredictionWriter
from attngraft.train.checkpoint import check_lightning_checkpoint
from attngraft.train.module import ImageClassifier
from attngraft.train.network import starts_from_imagenet
from attngraft.train.trainer import RUNS_DIR, create_trainer, quiet_console, run_loggers
from attngraft.validation import show

logger = logging.getLogger(__name__)


class AttngraftCLI(LightningCLI):
    """LightningCLI over :class:`ImageClassifier` and :class:`ImageDataModule` with attngraft's defaults."""

    def __init__(
        self, args: Sequence[str] | None = None, *, run: bool = True, prog: str = "attngraft", epilog: str | None = None
    ) -> None:
        words = list(args) if args is not None else sys.argv[1:]
        self._command = words[0] if run and words else None
        self._words = words
        super().__init__(
            ImageClassifier,
            ImageDataModule,
            trainer_defaults={"default_root_dir": RUNS_DIR, "callbacks": [PredictionWriter()]},
            save_config_kwargs={"overwrite": True},
            args=words,
            run=run,
            auto_configure_optimizers=False,
            # --trainer.max_epoch must not silently mean max_epochs; usage lines say "attngraft fit", not "cli.py fit".
            parser_kwargs={"allow_abbrev": False, "prog": prog, "epilog": epilog},
        )

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """The command being run only (all four when it is not one of them, so the parser names the valid ones).

        LightningCLI builds one parser per Trainer method, each introspecting every class's signature (~0.5 s of
        CPU apiece); ``fit`` needs only its own.
        """
        everything = LightningCLI.subcommands()
        return {self._command: everything[self._command]} if self._command in everything else everything

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parses ``args`` (``sys.argv[1:]`` when None) as LightningCLI does, without its warning about both.

        The ``attngraft`` command hands LightningCLI its own arguments (after ``-v``, or after ``lr-find`` has taken
        its sweep options), so ``args`` and ``sys.argv`` both being set is expected, not a mistake.
        """
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                self.config = parser.parse_args(args)
        except SystemExit as exited:
            if exited.code in (0, None):
                sys.stderr.write(errors.getvalue())
                raise
            sys.stderr.write(f"attngraft {self._command or 'lr-find'}: error: {_parser_error(errors.getvalue())}\n")
            raise
        sys.stderr.write(errors.getvalue())

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None, help="run directory name (default: recipe)")
        # Best by val_acc. Lightning writes a monitored callback's "last" only when it also saves a best, so the
        # latest state has its own callback below.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best-{epoch}-{val_acc:.4f}",
            }
        )
        # The latest state, as last.ckpt: every epoch, or every N optimiser steps with
        # --last_checkpoint.every_n_train_steps N (for long epochs: a kill then loses at most N steps).
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.save_last": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(FeatureCache, "feature_cache")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_channels", "model.in_chans", apply_on="instantiate")

    @override
    def before_instantiate_classes(self) -> None:
        """Resolves ``data.normalize: auto`` for the backbone.

        The resolved normalisation is what the saved ``config.yaml`` records, so explaining the run later
        normalises its images the same way.
        """
        settings = self._settings()
        if settings.get("data.normalize") == "auto":
            imagenet = starts_from_imagenet(settings.get("model.network"))
            settings["data.normalize"] = resolve_normalization("auto", imagenet_weights=imagenet)
        if settings.get("data.val_size") == 0:
            _without_validation(settings)
        if not hasattr(self, "_resumed_version"):  # a Lightning without _parse_ckpt_path
            self._resolve_checkpoint(settings)

    @override
    def _parse_ckpt_path(self) -> None:
        """Checks ``--ckpt_path`` (and resolves ``last``) before LightningCLI reads the file's hyperparameters."""
        subcommand = self.config.get("subcommand")
        settings = self.config[subcommand] if subcommand else self.config
        content = self._resolve_checkpoint(settings)
        if content is not None:
            explicit = given_model_keys(self._words)
            check_agreement(settings.get("model"), content.get("hyper_parameters"), settings["ckpt_path"], explicit)
        super()._parse_ckpt_path()

    def _resolve_checkpoint(self, settings: Any) -> Mapping[str, Any] | None:
        """``--ckpt_path last`` becomes the run's newest ``last.ckpt``; any file is checked (a clear error if bad).

        Returns:
            The checkpoint's content (tensors memory-mapped), or None without a local checkpoint.
        """
        self._resumed_version: int | None = None
        self._resumed_step: int | None = None
        given = settings.get("ckpt_path")
        if given is None and self._command in ("validate", "test", "predict"):
            logger.warning(
                "%s without --ckpt_path evaluates the network's fresh, untrained weights (give --ckpt_path last)",
                self._command,
            )
        if given is None or "://" in str(given):  # remote checkpoints: Lightning's own reader
            return None
        if given == "last":
            root = Path(settings.get("trainer", {}).get("default_root_dir") or RUNS_DIR) / _run_name(settings)
            checkpoint = latest_checkpoint(root)
            if checkpoint is None:
                raise ConfigError(f"--ckpt_path last: no checkpoint under {root}/version_*/checkpoints/")
            settings["ckpt_path"] = str(checkpoint)
            if self._command == "fit":  # continue the run's directory: its logs and checkpoints
                self._resumed_version = int(checkpoint.parent.parent.name.removeprefix("version_"))
        elif given in ("best", "hpc", "registry"):
            raise ConfigError(
                f"--ckpt_path {given}: names a checkpoint of a fit in the same process; give 'last' (the run's newest "
                "last.ckpt) or a .ckpt file"
            )
        content = check_lightning_checkpoint(settings["ckpt_path"])
        if self._resumed_version is not None:  # the run's metrics.csv keeps its rows from before the checkpoint
            self._resumed_step = int(content["global_step"])
        return content

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if config.get("logger") in (None, True):
            root = config.get("default_root_dir") or RUNS_DIR
            config["logger"] = run_loggers(
                root, _run_name(self._settings()), self._resumed_version, resumed_step=self._resumed_step
            )
        # The parser describes Trainer's arguments; the factory takes the same ones and adds attngraft's defaults.
        self.trainer_class = create_trainer
        return super()._instantiate_trainer(config, callbacks)

    def _settings(self) -> Any:
        """The parsed settings of the running command."""
        return self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config


def _parser_error(text: str) -> str:
    """Jsonargparse's usage, tip and indented error lines as one line: what follows ``error:``, joined."""
    _, marker, error = text.partition("error: ")
    return " ".join(error.split()) if marker else " ".join(text.split()[-40:])


def _without_validation(settings: Any) -> None:
    """``data.val_size 0`` trains without validation: what monitors a validation metric is turned off, and said so.

    The best-``val_acc`` checkpoint keeps nothing (``last.ckpt`` is still written); callbacks in ``trainer.callbacks``
    that monitor a ``val_`` metric (EarlyStopping in the recipes) are removed.
    """
    settings["checkpoint.save_top_k"] = 0
    callbacks = settings.get("trainer.callbacks") or []
    kept = [callback for callback in callbacks if not _monitors_validation(callback)]
    for callback in callbacks:
        if _monitors_validation(callback):
            logger.warning(
                "data.val_size 0: no validation, so %s(monitor=%s) is off",
                str(callback.class_path).rpartition(".")[2],
                callback.init_args.monitor,
            )
    settings["trainer.callbacks"] = kept
    logger.warning("data.val_size 0: no validation; only last.ckpt is kept (no best-val_acc checkpoint)")


def _monitors_validation(callback: Any) -> bool:
    monitor = getattr(getattr(callback, "init_args", None), "monitor", None)
    return isinstance(monitor, str) and monitor.startswith("val_")


# Model options that make another network: given unlike the checkpoint's, they are an error, not silently replaced.
NETWORK_OPTIONS = ("network", "num_classes", "in_chans", "teacher", "distillation")


def check_agreement(model: Any, saved: Any, checkpoint: str, explicit: set[str] | None = None) -> None:
    """Refuses model options that disagree with the checkpoint's; warns of other settings the checkpoint overrides.

    LightningCLI replaces the model section with the checkpoint's hyperparameters. An option the user did not give
    (not in ``explicit``, the keys of :func:`given_model_keys`; without it, an option left at its default) is
    replaced quietly; a network option given differently is an error; other options given differently (``lr``...)
    are named in a warning, as the checkpoint's values are used.

    Raises:
        ConfigError: Naming the option, the value given and the checkpoint's.
    """
    if not isinstance(saved, Mapping) or model is None:
        return
    given = _plain(model)
    defaults = {
        name: parameter.default for name, parameter in inspect.signature(ImageClassifier.__init__).parameters.items()
    }
    replaced = []
    for key, value in saved.items():
        if key not in defaults or key not in given:
            continue
        mine, theirs = _plain(given[key]), _plain(value)
        chosen = key in explicit if explicit is not None else mine != _plain(defaults[key])
        if mine is None or not chosen or mine == theirs:
            continue
        if key in NETWORK_OPTIONS:
            raise ConfigError(
                f"model.{key} {show(mine)}: expected the checkpoint's {show(theirs)} ({checkpoint} was trained "
                "with it); drop the option to use the checkpoint's"
            )
        replaced.append(f"model.{key} {show(theirs)} (not {show(mine)})")
    if replaced:
        logger.warning("%s: the checkpoint's settings are used: %s", checkpoint, ", ".join(replaced))


def given_model_keys(words: Sequence[str]) -> set[str]:
    """The ``model`` options a command line sets: ``--model.KEY`` words and the model sections of its recipes."""
    keys: set[str] = set()
    for index, word in enumerate(words):
        option, _, value = word.partition("=")
        if option.startswith("--model."):
            keys.add(option.removeprefix("--model.").split(".")[0])
        elif option in ("--config", "-c"):
            path = value or (words[index + 1] if index + 1 < len(words) else "")
            keys |= _recipe_model_keys(path)
    return keys


def _recipe_model_keys(path: str) -> set[str]:
    try:
        content = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    model = content.get("model") if isinstance(content, Mapping) else None
    if isinstance(model, Mapping) and isinstance(model.get("init_args"), Mapping):
        model = model["init_args"]
    return {str(key) for key in model} if isinstance(model, Mapping) else set()


def _plain(value: Any) -> Any:
    """Jsonargparse Namespaces as dicts, paths as strings: values that compare as the user wrote them."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def _run_name(settings: Any) -> str:
    """``--run_name``, else the first recipe's file name, else "default"."""
    if settings.get("run_name"):
        name = str(settings["run_name"])
        if name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"--run_name {name!r}: expected a folder name under runs/ (no '/', not '.' or '..')")
        return name
    recipes = settings.get("config") or []
    return Path(str(recipes[0])).stem if recipes else "default"


def latest_checkpoint(run_root: Path) -> Path | None:
    """The most recently written ``last*.ckpt`` of any ``version_<n>`` under ``run_root``."""
    candidates = [
        path
        for path in run_root.glob("version_*/checkpoints/last*.ckpt")
        if path.parent.parent.name.removeprefix("version_").isdigit()
    ]
    return max(candidates, key=lambda path: path.stat().st_mtime_ns, default=None)


def run_lightning(command: str, args: Sequence[str]) -> int:
    """Runs a training command: LightningCLI's ``fit|validate|test|predict``, or the LR finder."""
    args = recipe_arguments(args)  # --config NAME: a local file, else a packaged recipe (attngraft.recipes)
    with warnings.catch_warnings(), quiet_console():  # the resolved arguments differ from sys.argv on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        try:
            if command == "lr-find":
                return lr_find(args)
            AttngraftCLI([command, *args])
        except MisconfigurationException as error:  # Lightning's word for a bad setting (no GPU, a missing metric)
            raise ConfigError(" ".join(str(error).split())) from None
    return 0


def lr_find(args: Sequence[str]) -> int:
    """Sweeps the learning rate exponentially, saves the loss-vs-LR plot, prints the steepest-descent rate.

    Lightning's suggestion is the rate where the smoothed loss falls fastest, not where it is lowest (by then the
    rate is usually too high). The plot and a one-line ``lr_find.txt`` go into the run directory.
    """
    import matplotlib

    matplotlib.use("Agg")
    sweep = argparse.ArgumentParser(prog="attngraft lr-find", add_help=False)
    sweep.add_argument("--min_lr", type=float, default=1e-6)
    sweep.add_argument("--max_lr", type=float, default=1.0)
    sweep.add_argument("--num_training", type=int, default=100, help="steps of the sweep")
    options, rest = sweep.parse_known_args(list(args))
    epilog = "sweep options: " + ", ".join(
        f"--{name} (default {sweep.get_default(name)})" for name in ("min_lr", "max_lr", "num_training")
    )
    if not 0 < options.min_lr < options.max_lr or options.num_training < 2:
        raise ConfigError("lr-find needs 0 < --min_lr < --max_lr and --num_training >= 2")
    cli = AttngraftCLI(rest, run=False, prog="attngraft lr-find", epilog=epilog)
    trainer, model = cli.trainer, cli.model
    result = Tuner(trainer).lr_find(
        model,
        datamodule=cli.datamodule,
        min_lr=options.min_lr,
        max_lr=options.max_lr,
        num_training=options.num_training,
        update_attr=False,
    )
    if result is None:
        raise ConfigError("the LR finder did not run (fast_dev_run?)")
    suggestion = result.suggestion()
    directory = Path(trainer.log_dir or RUNS_DIR)
    figure = result.plot(suggest=True)
    with atomic_path(directory / "lr_find.png") as temporary:
        figure.savefig(temporary, format="png", dpi=120)  # type: ignore[union-attr]
    with atomic_path(directory / "lr_find.txt") as temporary:
        temporary.write_text(f"suggested_lr {suggestion}\n")
    print(f"suggested lr (steepest descent): {suggestion:.3g}" if suggestion else "no suggestion (loss did not fall)")
    print(f"plot: {directory / 'lr_find.png'}")
    return 0
