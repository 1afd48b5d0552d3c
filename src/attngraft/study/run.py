"""Runs a study: every cell on every available dataset for every seed, then the tables and plots.

The results are rewritten after each run, so an interrupted study keeps every finished run and ``--resume``
continues it (a run whose cell, seed or backbone weights changed since is trained again).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import shutil
import sys
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attngraft._io import atomic_path, write_json, write_text
from attngraft.data import locate_dataset
from attngraft.errors import ConfigError, DataNotFoundError
from attngraft.explain import METHODS
from attngraft.study.cell import (
    RESULT_FILE,
    WEIGHTS_FILE,
    check_run,
    finished_result,
    run_fingerprint,
    train_run,
    trained_network,
)
from attngraft.study.config import Run, Study
from attngraft.study.measure import environment
from attngraft.study.plots import plot_accuracy_latency, plot_attributions, plot_training_curves
from attngraft.study.progress import CellProgress, StudyLogFilter
from attngraft.study.report import latency_columns, markdown_table, summarize, write_rows
from attngraft.train.cache import FeatureDataset

logger = logging.getLogger(__name__)
STUDIES_DIR = Path("runs") / "studies"


@dataclass(frozen=True)
class StudyOptions:
    """How to run a study.

    Attributes:
        out: The study's directory (default ``runs/studies/<name>-<profile>``).
        resume: Reuse the finished runs already in ``out``.
        backbone_weights: Backbone weights of every pretrained cell (a file, or ``imagenet`` for a torchvision or
            timm backbone); None: the study's own trained cell named by ``pretrained``.
        cells: Only these cells (and those they take weights from); None: all.
        data_dir: A directory searched first for every dataset's files.
        progress: Show a progress bar over the runs on stderr.
        command: The command line, for the results files.
    """

    out: Path | None = None
    resume: bool = False
    backbone_weights: str | None = None
    cells: Sequence[str] | None = None
    data_dir: str | None = None
    progress: bool = True
    command: str = ""


def default_directory(study: Study) -> Path:
    """``runs/studies/<name>-<profile>``."""
    return STUDIES_DIR / f"{study.name}-{study.profile}"


def available_datasets(study: Study, data_dir: str | None) -> tuple[list[str], list[str]]:
    """(datasets found, optional datasets skipped because their files are not here); a missing required one raises."""
    found, skipped = [], []
    for entry in study.datasets:
        try:
            locate_dataset(entry.name, data_dir=data_dir or study.cells(entry.name)[0].data.get("data_dir"))
        except DataNotFoundError:
            if not entry.optional:
                raise
            skipped.append(entry.name)
            continue
        found.append(entry.name)
    return found, skipped


def run_study(study: Study, options: StudyOptions) -> list[dict[str, Any]]:
    """Trains and measures every run of ``study`` and writes the results; returns the per-run rows.

    Raises:
        ConfigError: When ``out`` holds results and ``resume`` is off, or a cell's settings are invalid.
        DataNotFoundError: When a required dataset's files are not found.
    """
    out = options.out or default_directory(study)
    runs, skipped = _runs(study, options)
    _check_directory(out, options.resume)
    weights_file = _weights_file(options)
    out.mkdir(parents=True, exist_ok=True)
    started = _now()
    write_text(out / "config.yaml", yaml.safe_dump(study.resolved, sort_keys=False))
    info = {"command": options.command, "started": started, "skipped_datasets": skipped, **environment()}
    write_json(out / "environment.json", info)
    rows: list[dict[str, Any]] = []
    # Frozen-backbone features, reused by the next cell on the same backbone.
    feature_store: dict[str, FeatureDataset] = {}
    with _study_logging(out / "study.log"), _progress(len(runs), options.progress) as bar:
        logger.info("study %s, profile %s: %d runs into %s", study.name, study.profile, len(runs), out)
        _check_runs(runs, weights_file)
        for run in runs:
            bar.set_description(run.key)
            rows.append(_run_once(study, run, out, options, feature_store))
            _write_results(study, out, rows, info, runs, complete=options.cells is None)
            bar.update(1)
    return rows


def plan_study(study: Study, options: StudyOptions) -> list[Run]:
    """The runs :func:`run_study` would make, after the same checks of every cell's settings; nothing is written.

    Raises:
        ConfigError: For the first invalid setting of any cell, or unusable ``--backbone-weights``.
        DataNotFoundError: When a required dataset's files are not found.
    """
    runs, _ = _runs(study, options)
    with _setup_logs_off():
        _check_runs(runs, _weights_file(options))
    return runs


@contextmanager
def _setup_logs_off() -> Iterator[None]:
    """Lightning's per-Trainer banners and the data modules' "found in" lines off (warnings still show)."""
    loggers = [logging.getLogger(name) for name in ("lightning", "lightning.pytorch", "lightning.fabric", "attngraft")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _runs(study: Study, options: StudyOptions) -> tuple[list[Run], list[str]]:
    """The runs over the datasets that are here, and the names of the optional datasets skipped."""
    datasets, skipped = available_datasets(study, options.data_dir)
    if not datasets:
        raise DataNotFoundError(f"study {study.name}: none of its datasets is here ({', '.join(skipped)})")
    runs = study.runs(datasets, options.cells)
    if options.data_dir is not None:
        runs = [_with_data_dir(run, options.data_dir) for run in runs]
    return runs, skipped


def _weights_file(options: StudyOptions) -> str | None:
    """``--backbone-weights`` when it is a file (checked to exist), else None."""
    weights = options.backbone_weights
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise ConfigError(f"--backbone-weights: no file at {options.backbone_weights} (or use 'imagenet')")
    return weights if weights not in (None, "imagenet") else None


def _check_runs(runs: list[Run], weights_file: str | None) -> None:
    """Builds every cell once (per dataset) without training; the first pretrained one with ``weights_file``."""
    cells = list({(run.dataset, run.cell.name): run for run in runs}.values())
    first_pretrained = next((run for run in cells if run.cell.pretrained is not None), None)
    for run in cells:
        check_run(run, weights_file if run is first_pretrained else None)


def _run_once(
    study: Study, run: Run, out: Path, options: StudyOptions, feature_store: dict[str, FeatureDataset]
) -> dict[str, Any]:
    weights = _backbone_weights(run, out, options.backbone_weights)
    fingerprint = run_fingerprint(run, _identity(weights), study.resolved["measure"])
    directory = out / run.key
    if options.resume:
        row = finished_result(directory, fingerprint)
        if row is not None:
            logger.info("%s: finished before, reused", run.key)
            return row
    logger.info("%s: training %d epochs", run.key, run.cell.epochs)
    return train_run(
        run,
        directory,
        backbone_weights=weights,
        batch_sizes=study.batch_sizes,
        repeats=study.repeats,
        fingerprint=fingerprint,
        test_every_epoch=study.test_every_epoch,
        feature_store=feature_store,
        callbacks=[CellProgress(run.key, bar=options.progress)],
    )


def _backbone_weights(run: Run, out: Path, override: str | None) -> str | None:
    """A pretrained cell's backbone weights: ``--backbone-weights``, else its source cell's trained network."""
    if run.cell.pretrained is None:
        return None
    if override is not None:
        return override
    source = out / run.dataset / run.cell.pretrained / f"seed{run.seed}" / WEIGHTS_FILE
    if not source.is_file():
        raise ConfigError(f"cell {run.cell.name}: its pretrained cell's weights are missing ({source})")
    return str(source)


def _identity(weights: str | None) -> str | None:
    """What identifies backbone weights: a file's content digest (a retrained source cell changes it), or a name."""
    if weights is None or not Path(weights).is_file():
        return weights
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_directory(out: Path, resume: bool) -> None:
    finished = list(out.glob(f"*/*/seed*/{RESULT_FILE}")) if out.is_dir() else []
    if finished and not resume:
        raise ConfigError(
            f"{out} already holds {len(finished)} finished runs: pass --resume to continue that study, "
            "or choose another --out"
        )


def _with_data_dir(run: Run, data_dir: str) -> Run:
    return dataclasses.replace(run, cell=dataclasses.replace(run.cell, data={**run.cell.data, "data_dir": data_dir}))


def _write_results(
    study: Study, out: Path, rows: list[dict[str, Any]], info: dict[str, Any], runs: Sequence[Run], complete: bool
) -> None:
    """Rewrites the tables and plots; once every run has finished (and ``complete``: all cells), the attributions."""
    summary = summarize(rows)
    write_rows(out, rows)
    finished = _now()
    write_json(
        out / "results.json",
        {"study": study.name, "profile": study.profile, **info, "finished": finished, "rows": rows, "summary": summary},
    )
    drawn = _draw_attributions(study, out, runs) if complete and len(rows) == len(runs) else set()
    write_text(out / "results.md", results_markdown(study, summary, info, len(rows), len(runs), drawn))
    latency = _plot_latency(summary)
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        if latency is not None:
            plot_accuracy_latency(summary, dataset, out / f"accuracy_latency_{dataset}.png", latency)
        curves = [
            (f"{run.cell.label} (seed {run.seed})", out / run.key / "metrics.csv")
            for run in runs[: len(rows)]
            if run.dataset == dataset
        ]
        plot_training_curves(curves, out / f"training_curves_{dataset}.png")


def _draw_attributions(study: Study, out: Path, runs: Sequence[Run]) -> set[str]:
    """``attributions_<dataset>.png`` of every dataset: the cells' attributions (first seed); the datasets drawn.

    A figure that fails (e.g. out of memory) is logged and left out: the tables are written already.
    """
    drawn: set[str] = set()
    if study.explain_images == 0:
        return drawn
    for dataset in dict.fromkeys(run.dataset for run in runs):
        chosen = [run for run in runs if run.dataset == dataset and run.seed == study.seeds[0]]
        logger.info("%s: drawing %s attributions of %d models", dataset, study.explain_method, len(chosen))
        try:
            models = [(run.cell.label, *trained_network(run, out / run.key)) for run in chosen]
            path = out / f"attributions_{dataset}.png"
            plot_attributions(models, study.explain_images, study.explain_method, path)
        except Exception as error:  # a figure must not cost the finished study its report
            logger.warning("%s: the attributions figure failed: %s: %s", dataset, type(error).__name__, error)
            continue
        drawn.add(dataset)
    return drawn


def _plot_latency(summary: Sequence[dict[str, Any]]) -> str | None:
    """The latency column of the accuracy plot: batch 1 when measured, else the smallest batch."""
    columns = latency_columns(summary)
    return columns[0] if columns else None


def results_markdown(
    study: Study,
    summary: Sequence[dict[str, Any]],
    info: dict[str, Any],
    done: int,
    total: int,
    attributions: Collection[str] = (),
) -> str:
    """``results.md``: what ran, where and how, then one table per dataset (and its ``attributions`` figure)."""
    gpu = info.get("gpu") or "none"
    lines = [
        f"# Study `{study.name}`, profile `{study.profile}`",
        "",
        study.description.strip(),
        "",
        f"- Command: `{info.get('command') or '(library call)'}`",
        f"- Machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('torch_threads')} torch threads; "
        f"GPU: {gpu}",
        f"- Stack: torch {info.get('torch')}, torchvision {info.get('torchvision')}, "
        f"lightning {info.get('lightning')}, timm {info.get('timm')}; commit {info.get('git_commit')}",
        f"- Started {info.get('started')}; {done} of {total} runs finished; seeds {study.seeds}",
    ]
    if info.get("skipped_datasets"):
        lines.append(f"- Skipped (files not found here): {', '.join(info['skipped_datasets'])}")
    lines += [
        "- Test accuracy: the final epoch's weights on the official test set. Latency: eval mode, CPU, "
        "median of timed calls divided by the batch size. GFLOPs: forward, one image, 2 per multiply-add. "
        "Train time: wall clock of fitting, feature caching included.",
    ]
    for dataset in dict.fromkeys(row["dataset"] for row in summary):
        lines += ["", f"## {dataset}", "", markdown_table(summary, dataset), ""]
        lines += [f"![accuracy vs latency](accuracy_latency_{dataset}.png)"]
        lines += [f"![training curves](training_curves_{dataset}.png)"]
        if dataset in attributions:
            method = METHODS.get(study.explain_method).title
            lines += ["", f"{method} of each model's predicted class (seed {study.seeds[0]}, first test images):", ""]
            lines += [f"![attributions](attributions_{dataset}.png)"]
    return "\n".join(lines) + "\n"


PUBLISHED = ("results.md", "results.csv", "results.json", "config.yaml", "environment.json", "*.png")


def publish(out: Path, destination: Path) -> list[Path]:
    """Copies a study's tables, plots, resolved config and environment (not its weights or logs) to ``destination``.

    Returns:
        The files written.
    """
    written = []
    for pattern in PUBLISHED:
        for source in sorted(out.glob(pattern)):
            target = destination / source.name
            with atomic_path(target) as temporary:
                shutil.copyfile(source, temporary)
            written.append(target)
    return written


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@contextmanager
def _study_logging(path: Path) -> Iterator[None]:
    """Sends attngraft's and Lightning's log records and Python warnings to ``path``; the console stays quiet.

    Lightning's per-Trainer banners and the data modules' "found in" lines are written once, its tips never.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(StudyLogFilter())
    names = ("attngraft", "lightning.pytorch", "lightning.fabric", "py.warnings")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(log, log.level, log.propagate, list(log.handlers)) for log in loggers]
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for log in loggers:
                log.handlers = [handler]
                log.setLevel(logging.INFO)
                log.propagate = False
            yield
    finally:
        logging.captureWarnings(False)
        for log, level, propagate, handlers in saved:
            log.handlers, log.level, log.propagate = handlers, level, propagate
        handler.close()


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    """A progress bar over the runs on stderr, with elapsed time and ETA (tqdm)."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    bar = tqdm(total=total, unit="run", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
