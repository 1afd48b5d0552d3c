from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attngraft.cli import main
from attngraft.data.datamodule import ImageDataModule
from attngraft.train import ImageClassifier
from tests.train.conftest import REPO


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "attngraft.cli", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _final(run_dir: Path, key: str) -> float:
    return float([row[key] for row in _metrics(run_dir) if row.get(key)][-1])


def test_fit_writes_checkpoints_logs_and_the_resolved_config(
    write_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_recipe("baseline")
    assert main(["fit", "--config", str(path), "--trainer.max_epochs", "1"]) == 0
    run = tmp_path / "runs" / "baseline" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 1  # the command-line override is in the saved config
    assert saved["model"]["network"] == "mnist_cnn"
    assert saved["checkpoint"]["monitor"] == "val_acc"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("best-epoch=0-val_acc=*.ckpt"))) == 1
    assert list(run.glob("events.out.tfevents.*"))
    assert 0.3 < _final(run, "val_acc") <= 1.0  # 256 images, one epoch: well above chance (0.1)
    assert {"lr-AdamW/new", "lr-AdamW/new_no_decay"} <= set(_metrics(run)[0])

    assert main(["test", "--config", str(path), "--ckpt_path", "last"]) == 0  # the newest version's last.ckpt
    tested = tmp_path / "runs" / "baseline" / "version_1"
    assert _final(tested, "test_acc") == pytest.approx(_final(run, "val_acc"), abs=0.15)  # trained weights
    assert main(["predict", "--config", str(path), "--ckpt_path", "last", "--trainer.limit_predict_batches", "2"]) == 0
    predictions = list(csv.DictReader((tmp_path / "runs" / "baseline" / "version_2" / "predictions.csv").open()))
    assert len(predictions) == 64
    assert set(predictions[0]) >= {"index", "predicted", "probability", "p9"}
    assert sum(float(predictions[0][f"p{label}"]) for label in range(10)) == pytest.approx(1.0, abs=1e-4)


def test_ckpt_path_last_without_a_checkpoint_is_an_error(write_recipe, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["test", "--config", str(write_recipe("never_trained")), "--ckpt_path", "last"]) == 2
    assert "--ckpt_path last: no checkpoint under runs/never_trained" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.lr", "-0.1"], "model.lr -0.1: expected a positive number"),
        (["--data.batch_size", "0"], "data.batch_size 0: expected a positive integer"),
        (["--model.network", "resnet19"], "unknown model 'resnet19'"),
        (
            ["--model.network", "{name: vit, num_heads: 5}"],
            "model.network options for vit {'num_heads': 5}: MultiHeadSelfAttention: dim=64 is not divisible",
        ),
        (["--model.network", "{name: vit, patch_size: 5}"], "patch_size 5 must divide img_size 28"),
        (["--data.image_size", "0"], "data.image_size 0: expected a positive integer"),
        (["--data.channels", "0"], "data.channels 0: expected 1 (grey) or 3 (RGB)"),
        (["--data.val_size", "60000"], "data.val_size 60000: expected a count in [0, 60000) or a fraction in (0, 1)"),
        (["--data.val_size", "1.5"], "data.val_size 1.5: expected a count >= 0 or a fraction in (0, 1)"),
        (["--data.data_dir", "/nonexistent"], "data_dir /nonexistent is not a directory"),
    ],
)
def test_invalid_values_exit_2_naming_the_key(
    write_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, override: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(write_recipe()), *override]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()  # nothing trained


def test_unknown_and_mistyped_keys_are_rejected_by_the_parser(
    write_recipe, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # were a run to start, it would write here
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(write_recipe()), "--trainer.max_epoch", "3"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(write_recipe()), "--model.lr", "fast"])
    assert "model.lr" in capsys.readouterr().err


def test_lr_find_saves_the_plot_and_suggests_a_rate(write_recipe, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_recipe("sweep")
    assert main(["lr-find", "--config", str(path), "--num_training", "24", "--min_lr", "1e-5"]) == 0
    run = tmp_path / "runs" / "sweep" / "version_0"
    assert (run / "lr_find.png").stat().st_size > 1000
    suggested = float((run / "lr_find.txt").read_text().split()[1])
    assert 1e-5 <= suggested <= 1.0
    assert "suggested lr (steepest descent)" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "two-loader-processes"])
def test_the_shipped_recipe_killed_mid_epoch_resumes_exactly(workers: int, tmp_path: Path, fashion_mnist_dir) -> None:
    """configs/resnet18_fashion_mnist.yaml (random crop + flip), SIGKILLed after step 5, its last checkpoint at step 4:
    ``--ckpt_path last`` ends with the uninterrupted run's weights, and its metrics.csv is the uninterrupted one's."""
    recipe = [
        "--config",
        "configs/resnet18_fashion_mnist.yaml",  # the packaged recipe: no such file in tmp_path
        *("--data.data_dir", str(fashion_mnist_dir), "--data.num_workers", str(workers)),
        *("--data.train_size", "192", "--data.val_size", "64", "--data.batch_size", "32"),  # 6 steps per epoch
        *("--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"),
        *("--last_checkpoint.every_n_train_steps", "2"),
    ]
    reference = _run("fit", *recipe, "--run_name", "reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killer = {"class_path": "tests.train.helpers.KillAtStep", "init_args": {"step": 5}}
    killed = _run("fit", *recipe, f"--trainer.callbacks+={json.dumps(killer)}", cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]  # killed mid-epoch 0, after the step-4 checkpoint
    run = tmp_path / "runs" / "resnet18_fashion_mnist" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert len(_metrics(run)) > 4  # rows up to step 5 were written before the kill

    resumed = _run("fit", *recipe, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    # No warning users cannot act on: Lightning's "exists and is not empty" (its CSV logger would have deleted
    # metrics.csv), its tips, setup lines repeated by the second data module.
    assert "exists and is not empty" not in resumed.stderr
    assert "Tip:" not in resumed.stderr
    assert resumed.stderr.count("fashion-mnist: found in") == 1
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    expected_run = tmp_path / "runs" / "reference" / "version_0"
    expected = torch.load(expected_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 12
    assert len(expected["state_dict"]) == 122
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert (run / "metrics.csv").read_text() == (expected_run / "metrics.csv").read_text()


def test_ddp_on_two_cpu_processes_keeps_ranks_identical_and_reduces_metrics(
    write_recipe, tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    report = {"class_path": "tests.train.helpers.RankReport", "init_args": {"directory": str(tmp_path / "ranks")}}
    path = write_recipe("ddp", trainer={"max_epochs": 1, "deterministic": False})
    result = _run(
        "fit",
        "--config",
        str(path),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        f"--trainer.callbacks+={json.dumps(report)}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]  # gradients were all-reduced: identical weights
    assert ranks[0]["val_batches"] == [2]  # each rank saw half of the 128 validation images
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"]

    # The logged accuracy is that of the whole validation set, not of one rank's half.
    module = ImageClassifier.load_from_checkpoint(
        tmp_path / "runs" / "ddp" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    ).eval()
    data = ImageDataModule(data_dir=fashion_mnist_dir, batch_size=128, train_size=256, val_size=128, num_workers=0)
    data.setup("fit")
    images, labels = next(iter(data.val_dataloader()))
    with torch.no_grad():
        accuracy = (module(images).argmax(dim=1) == labels).float().mean().item()
    assert ranks[0]["val_acc"] == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize(("weights", "expected"), [("imagenet", "imagenet"), (None, "dataset")])
def test_auto_normalisation_follows_the_backbone_weights(
    write_recipe, tmp_path: Path, monkeypatch, weights: str | None, expected: str
) -> None:
    import torchvision

    from attngraft.train.cli import AttngraftCLI

    # A stand-in for torchvision's ImageNet file in torch hub's cache (random weights; nothing is downloaded).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cache / "resnet18-f37072fd.pth")
    network = {"backbone": "torchvision/resnet18", "weights": weights, "image_size": 32}
    recipe = write_recipe(model={"network": network}, data={"normalize": "auto", "image_size": 32})
    cli = AttngraftCLI(["--config", str(recipe), "--trainer.default_root_dir", str(tmp_path / "runs")], run=False)
    assert cli.datamodule.normalization == expected
    assert cli.config["data"]["normalize"] == expected  # what the saved config.yaml records


def bad_checkpoints(directory: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not checkpoints, each with the message users get for it."""
    directory.mkdir(parents=True, exist_ok=True)
    empty, truncated, random_bytes = directory / "empty.ckpt", directory / "truncated.ckpt", directory / "random.ckpt"
    weights, code = directory / "weights.ckpt", directory / "code.ckpt"
    empty.touch()
    torch.save({"state_dict": {"w": torch.ones(64)}, "global_step": 3}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    random_bytes.write_bytes(bytes(range(256)) * 4)
    torch.save({"w": torch.ones(2)}, weights)
    torch.save({"state_dict": {}, "global_step": 0, "hook": subprocess.Popen}, code)
    return {
        "missing": (directory / "nope.ckpt", "nope.ckpt: no such file"),
        "directory": (directory, "a directory, not a checkpoint file"),
        "empty": (empty, "empty.ckpt: an empty file"),
        "truncated": (truncated, "truncated.ckpt is corrupt or not a torch file"),
        "random bytes": (random_bytes, "random.ckpt is corrupt or not a torch file"),
        "weights only": (weights, "weights.ckpt: not a Lightning checkpoint (no state_dict and global_step"),
        "pickled code": (code, "it holds pickled objects other than tensors ("),
    }


@pytest.mark.parametrize("command", ["fit", "test"])
@pytest.mark.parametrize(
    "case", ["missing", "directory", "empty", "truncated", "random bytes", "weights only", "pickled code"]
)
def test_a_bad_ckpt_path_is_one_clear_line(command, case, write_recipe, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path, message = bad_checkpoints(tmp_path / "files")[case]
    assert main([command, "--config", str(write_recipe()), "--ckpt_path", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"attngraft {command}: error: --ckpt_path {path}" in error
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()


def test_ckpt_path_best_is_explained(write_recipe, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["test", "--config", str(write_recipe()), "--ckpt_path", "best"]) == 2
    assert "give 'last' (the run's newest last.ckpt) or a .ckpt file" in capsys.readouterr().err


def test_options_that_disagree_with_the_checkpoint_are_not_silently_replaced(
    write_recipe, tmp_path: Path, monkeypatch, capsys, caplog
) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = str(write_recipe("agree", trainer={"max_epochs": 1, "limit_test_batches": 2}))
    assert main(["fit", "--config", recipe, "--trainer.limit_train_batches", "2"]) == 0
    capsys.readouterr()
    assert main(["test", "--config", recipe, "--model.network", "resnet26", "--ckpt_path", "last"]) == 2
    error = capsys.readouterr().err
    assert "model.network 'resnet26': expected the checkpoint's 'mnist_cnn'" in error
    assert "drop the option to use the checkpoint's" in error
    assert main(["test", "--config", recipe, "--model.lr", "0.5", "--ckpt_path", "last"]) == 0
    assert "the checkpoint's settings are used: model.lr 0.001 (not 0.5)" in caplog.text
    capsys.readouterr()
    # A recipe that names the default network explicitly is the user's choice too.
    other = write_recipe("other", model={"network": "resnet18"}, trainer={"limit_test_batches": 2})
    checkpoint = tmp_path / "runs" / "agree" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["test", "--config", str(other), "--ckpt_path", str(checkpoint)]) == 2
    assert "model.network 'resnet18': expected the checkpoint's 'mnist_cnn'" in capsys.readouterr().err


def test_no_validation_set_and_unbounded_epochs_with_a_step_limit_work(
    write_recipe, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.chdir(tmp_path)
    stop = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val_acc"}}
    recipe = str(write_recipe("no_val", trainer={"max_epochs": -1, "max_steps": 3, "callbacks": [stop]}))
    assert main(["fit", "--config", recipe, "--data.val_size", "0"]) == 0
    checkpoints = tmp_path / "runs" / "no_val" / "version_0" / "checkpoints"
    assert [path.name for path in checkpoints.iterdir()] == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3
    assert "data.val_size 0: no validation, so EarlyStopping(monitor=val_acc) is off" in caplog.text
