"""The run loggers: a resumed run's metrics.csv keeps the rows it logged before its checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from attngraft.train.trainer import RunCSVLogger, run_loggers

HEADER = ["epoch", "step", "train_loss_step"]


def write_metrics(directory: Path, steps: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "metrics.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows({"epoch": 0, "step": step, "train_loss_step": 1.0 / (step + 1)} for step in steps)
    return path


def steps_in(path: Path) -> list[int]:
    with path.open(newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file)]


def test_a_resumed_run_keeps_the_rows_before_its_checkpoint_and_appends(tmp_path: Path) -> None:
    path = write_metrics(tmp_path / "run" / "version_0", [0, 1, 2, 3, 4, 5])
    logger = RunCSVLogger(tmp_path, name="run", version=0, resumed_step=4)
    logger.log_metrics({"train_loss_step": 0.5, "epoch": 0}, step=4)
    logger.save()
    assert steps_in(path) == [0, 1, 2, 3, 4]
    assert path.read_text().splitlines()[0] == ",".join(HEADER)


def test_a_new_run_replaces_an_old_metrics_file_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_metrics(tmp_path / "run" / "version_0", [0, 1, 2])
    logger = RunCSVLogger(tmp_path, name="run", version=0)
    logger.log_metrics({"train_loss_step": 0.5}, step=0)
    logger.save()
    assert steps_in(path) == [0]
    assert "replaces its metrics.csv" in caplog.text


def test_a_fresh_run_directory_gives_no_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    (tmp_path / "run" / "version_0").mkdir(parents=True)
    (tmp_path / "run" / "version_0" / "config.yaml").write_text("seed_everything: 0\n")  # written before the logs
    _, csv_logger = run_loggers(tmp_path, "run", 0)
    csv_logger.log_metrics({"val_acc": 0.5}, step=0)
    csv_logger.save()
    assert [str(warning.message) for warning in recwarn if "exists and is not empty" in str(warning.message)] == []
    assert steps_in(tmp_path / "run" / "version_0" / "metrics.csv") == [0]
