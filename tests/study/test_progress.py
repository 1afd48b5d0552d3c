"""The run progress line and the study log's filter; a tiny study's console holds progress and no Lightning banners."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attngraft.cli import main
from attngraft.study import progress
from attngraft.study.progress import CellProgress, StudyLogFilter

BANNERS = ("GPU available", "TPU available", "LOCAL_RANK", "Tip:", "💡", "`Trainer.fit` stopped")


class Regression(L.LightningModule):
    """One linear layer on random data: logs ``train_loss`` per step and epoch, and ``val_acc``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_acc", 0.5)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(callback: CellProgress, epochs: int = 2, batches: int = 3) -> None:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4 * batches, 4, generator=generator), torch.randn(4 * batches, 1))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Regression(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))


def epoch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == progress.__name__]


def test_the_bar_counts_the_runs_steps_with_epoch_and_loss(caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "REFRESH_SECONDS", 0.0)  # every step redrawn, with its loss
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger=progress.__name__)
    fit(CellProgress("tiny/run", stream=stream))
    drawn = stream.getvalue()
    assert "tiny/run" in drawn
    # 2 epochs x 3 steps: the bar is the whole run's; each step shows its loss, each epoch's end its figures.
    assert re.search(r"1/6 \[[^\r]*epoch 1/2, loss \d+\.\d{4}\]", drawn), drawn
    assert re.search(r"3/6 \[[^\r]*epoch 1/2, train_loss_epoch \d+\.\d{4}, val_acc 0\.5000\]", drawn), drawn
    assert re.search(r"6/6 \[[^\r]*epoch 2/2, train_loss_epoch", drawn), drawn
    lines = epoch_lines(caplog)
    assert len(lines) == 2
    assert re.fullmatch(
        r"tiny/run: epoch 1/2, train_loss_epoch \d+\.\d{4}, val_acc 0\.5000; \d+ s elapsed, ETA \d+ s", lines[0]
    )
    assert lines[1].startswith("tiny/run: epoch 2/2, ")
    assert "ETA" not in lines[1]


def test_without_the_bar_only_the_epoch_lines_are_logged(caplog) -> None:
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger=progress.__name__)
    fit(CellProgress("tiny/run", bar=False, stream=stream), epochs=1)
    assert stream.getvalue() == ""
    lines = epoch_lines(caplog)
    assert len(lines) == 1
    assert re.fullmatch(r"tiny/run: epoch 1/1, train_loss_epoch \d+\.\d{4}, val_acc 0\.5000; \d+ s elapsed", lines[0])


@pytest.mark.parametrize(("seconds", "text"), [(4.4, "4 s"), (65, "1 min 05 s"), (3 * 3600 + 61, "3 h 01 min")])
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert progress._duration(seconds) == text


def record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_log_filter_drops_tips_and_normal_stops_and_keeps_banners_once() -> None:
    keep = StudyLogFilter().filter
    rank_zero = "lightning.pytorch.utilities.rank_zero"
    assert keep(record(rank_zero, "GPU available: False, used: False"))
    assert not keep(record(rank_zero, "GPU available: False, used: False"))  # the next Trainer's banner
    assert keep(record(rank_zero, "TPU available: False, using: 0 TPU cores"))
    assert not keep(record(rank_zero, "💡 Tip: For seamless cloud logging, try installing [litlogger]"))
    assert not keep(record(rank_zero, "`Trainer.fit` stopped: `max_epochs=3` reached."))
    assert keep(record("attngraft.data.datasets", "fashion-mnist: found in /data"))
    assert not keep(record("attngraft.data.datasets", "fashion-mnist: found in /data"))
    assert keep(record("attngraft.study.run", "a/b/seed0: finished before, reused"))
    assert keep(record("attngraft.study.run", "a/b/seed0: finished before, reused"))  # events always pass
    warning = record(rank_zero, "The dataloader does not have many workers", logging.WARNING)
    assert keep(warning)
    assert keep(warning)


def test_a_study_shows_run_progress_and_no_lightning_banners(study_file, tmp_path: Path, capfd) -> None:
    path = study_file(
        cells=[{"name": "base", "label": "Base", "network": "mnist_cnn", "epochs": "scratch"}],
        profiles={"quick": {"seeds": [0], "epochs": {"scratch": 2}}},
        measure={"batch_sizes": [1], "repeats": 1},
        explain={"images": 0},
    )
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    console = capfd.readouterr()
    assert not [banner for banner in BANNERS if banner in console.out + console.err]
    assert re.search(r"fashion-mnist/base/seed0: .*\| 4/4 \[.*epoch 2/2", console.err)  # 64 images, batch 32
    log = (out / "study.log").read_text()
    assert log.count("GPU available") == 1  # the check's Trainer and the fit's: one line
    assert "Tip:" not in log
    assert "`Trainer.fit` stopped" not in log
    assert re.search(r"fashion-mnist/base/seed0: epoch 1/2, train_loss_epoch .*ETA", log)
