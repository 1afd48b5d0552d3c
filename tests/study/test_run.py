from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import yaml

from attngraft.cli import main
from attngraft.errors import ConfigError, DataNotFoundError
from attngraft.study import StudyOptions, load_study, run_study
from attngraft.study import run as study_run
from tests.study.conftest import tiny_study


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> tuple[Path, Path, list[dict]]:
    """The tiny study, run once: (its file, its results directory, its rows)."""
    root = tmp_path_factory.mktemp("study")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study(fashion_mnist_dir), sort_keys=False))
    out = root / "out"
    rows = run_study(load_study(str(path)), StudyOptions(out=out, progress=False, command="test"))
    return path, out, rows


def copy_of(finished, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished[1], out)
    return out


def test_every_run_is_trained_tested_and_measured(finished):
    _, _out, rows = finished
    assert [(row["study_cell"], row["seed"]) for row in rows] == [("base", 0), ("head", 0), ("base", 1), ("head", 1)]
    for row in rows:
        assert 0 <= row["test_acc"] <= 1
        assert row["params_m"] > 0
        assert row["gflops"] > 0
        assert row["latency_ms_b1"] > 0
        assert row["latency_ms_b4"] > 0
        assert row["input"] == "1x28x28"
        assert row["train_images"] == 64
    base, head = rows[0], rows[1]
    assert (base["pretrained"], head["pretrained"]) == ("no", "yes")
    assert base["trainable_params_m"] == base["params_m"]
    assert 0 < head["trainable_params_m"] < head["params_m"]
    assert head["cached_features"]
    assert not base["cached_features"]
    assert head["epochs"] == 2


def test_the_study_log_has_one_line_per_event(finished):
    log = (finished[1] / "study.log").read_text()
    assert log.count("GPU available") == 1  # six Trainers: a check per cell, a fit per run
    assert log.count("fashion-mnist: found in") == 1
    assert "Tip:" not in log
    epochs = re.findall(r"fashion-mnist/(\w+)/seed(\d): epoch (\d/\d), train_loss_epoch", log)
    assert epochs == [
        ("base", "0", "1/1"),
        ("head", "0", "1/2"),
        ("head", "0", "2/2"),
        ("base", "1", "1/1"),
        ("head", "1", "1/2"),
        ("head", "1", "2/2"),
    ]


def test_results_files_hold_every_run_and_the_seed_summary(finished):
    _, out, rows = finished
    with (out / "results.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert [line["study_cell"] for line in lines] == ["base", "head", "base", "head"]
    content = json.loads((out / "results.json").read_text())
    assert content["rows"] == json.loads(json.dumps(rows))
    summary = {entry["study_cell"]: entry for entry in content["summary"]}
    accuracies = [row["test_acc"] for row in rows if row["study_cell"] == "head"]
    assert summary["head"]["seeds"] == 2
    assert summary["head"]["test_acc"] == pytest.approx(sum(accuracies) / 2)
    table = (out / "results.md").read_text()
    assert "| Base + graph head | yes | graph head | 2 | 64 |" in table
    assert "(2 seeds)" in table
    assert "4 of 4 runs finished" in table
    for name in (
        "accuracy_latency_fashion-mnist.png",
        "training_curves_fashion-mnist.png",
        "attributions_fashion-mnist.png",
    ):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "Integrated Gradients of each model's predicted class" in table
    assert "![attributions](attributions_fashion-mnist.png)" in table
    assert yaml.safe_load((out / "config.yaml").read_text())["profile"] == "quick"
    assert json.loads((out / "environment.json").read_text())["torch"]
    assert (out / "study.log").read_text()
    for run in ("base/seed0", "head/seed1"):
        assert (out / "fashion-mnist" / run / "metrics.csv").is_file()


def test_pretrained_cells_train_on_their_seeds_frozen_baseline(finished):
    _, out, _ = finished
    runs = out / "fashion-mnist"
    key = "layer1.0.conv1.weight"
    bases = [safetensors.torch.load_file(runs / "base" / f"seed{seed}" / "weights.safetensors")[key] for seed in (0, 1)]
    heads = [
        safetensors.torch.load_file(runs / "head" / f"seed{seed}" / "weights.safetensors")[f"backbone.{key}"]
        for seed in (0, 1)
    ]
    assert not bases[0].equal(bases[1])
    assert heads[0].equal(bases[0])
    assert heads[1].equal(bases[1])


def test_resume_reuses_finished_runs(finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, _, rows = finished
    out = copy_of(finished, tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study_run, "train_run", fail)
    assert run_study(load_study(str(path)), StudyOptions(out=out, resume=True, progress=False)) == rows


def test_a_results_directory_is_not_overwritten_without_resume(finished, tmp_path: Path):
    path, _, _ = finished
    out = copy_of(finished, tmp_path)
    before = (out / "results.csv").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds 4 finished runs: pass --resume"):
        run_study(load_study(str(path)), StudyOptions(out=out, progress=False))
    assert (out / "results.csv").read_bytes() == before


def test_resume_retrains_runs_whose_cell_changed(finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, _, rows = finished
    out = copy_of(finished, tmp_path)
    content = yaml.safe_load(path.read_text())
    content["cells"][1]["training"] = {"lr": 0.01}
    changed = tmp_path / "tiny.yaml"
    changed.write_text(yaml.safe_dump(content))
    trained = []
    monkeypatch.setattr(study_run, "train_run", lambda run, *args, **kwargs: trained.append(run.key) or rows[1])
    run_study(load_study(str(changed)), StudyOptions(out=out, resume=True, progress=False))
    assert trained == ["fashion-mnist/head/seed0", "fashion-mnist/head/seed1"]


def test_dependents_retrain_when_their_source_weights_change(finished, tmp_path: Path, monkeypatch):
    path, _, rows = finished
    out = copy_of(finished, tmp_path)
    weights = out / "fashion-mnist" / "base" / "seed0" / "weights.safetensors"
    state = safetensors.torch.load_file(weights)
    state["head.weight"] = state["head.weight"] + 1
    safetensors.torch.save_file(state, weights)
    trained = []
    monkeypatch.setattr(study_run, "train_run", lambda run, *args, **kwargs: trained.append(run.key) or rows[1])
    run_study(load_study(str(path)), StudyOptions(out=out, resume=True, progress=False))
    assert trained == ["fashion-mnist/head/seed0"]


def test_an_interrupted_study_keeps_its_finished_runs(finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, _, _rows = finished
    out = tmp_path / "out"
    shutil.copytree(finished[1] / "fashion-mnist" / "base" / "seed0", out / "fashion-mnist" / "base" / "seed0")
    calls = []

    def interrupt(run, *args, **kwargs):
        calls.append(run.key)
        raise KeyboardInterrupt

    monkeypatch.setattr(study_run, "train_run", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_study(str(path)), StudyOptions(out=out, resume=True, progress=False))
    assert calls == ["fashion-mnist/head/seed0"]
    with (out / "results.csv").open() as handle:
        assert [line["study_cell"] for line in csv.DictReader(handle)] == ["base"]
    assert (out / "fashion-mnist" / "base" / "seed0" / "weights.safetensors").is_file()


def test_missing_optional_dataset_is_skipped_and_a_required_one_stops(study_file, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(study_run, "train_run", lambda run, *args, **kwargs: pytest.fail("nothing should train"))
    path = study_file(datasets=["fashion-mnist", {"name": "cifar100", "optional": True}])
    empty = str(tmp_path / "empty")
    Path(empty).mkdir()
    assert study_run.available_datasets(load_study(str(path)), empty) == (["fashion-mnist"], ["cifar100"])
    only_optional = study_file(datasets=[{"name": "cifar100", "optional": True}])
    with pytest.raises(DataNotFoundError, match=r"none of its datasets is here \(cifar100\)"):
        run_study(load_study(str(only_optional)), StudyOptions(out=tmp_path / "out", progress=False, data_dir=empty))
    required = study_file(datasets=["cifar100"])
    with pytest.raises(DataNotFoundError, match="cifar100"):
        run_study(load_study(str(required)), StudyOptions(out=tmp_path / "other", progress=False))


def test_cli_plans_a_study(study_file, capsys):
    path = study_file()
    assert main(["study", str(path), "--plan", "--cells", "head"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "fashion-mnist/base/seed0",
        "fashion-mnist/head/seed0",
        "fashion-mnist/base/seed1",
        "fashion-mnist/head/seed1",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["study", "nope"], "unknown study 'nope'"),
        (["study", "graft", "--profile", "fast"], "unknown profile 'fast'"),
        (["study", "graft", "--set", "stage"], "--set 'stage': expected NAME=VALUE"),
        (["study", "graft", "--set", "head_stage=[1,"], "--set 'head_stage=[1,': the value is not YAML"),
        (["study", "graft", "--set", "stage=layer3"], "--set stage: no such variable"),
        (["study", "graft", "--cells", "graph_head", "--publish", "x"], "--publish takes the whole study"),
        (["study", "graft", "--backbone-weights", "/nonexistent.safetensors"], "no file at /nonexistent"),
        (["study", "graft", "--profil", "quick"], "attngraft study: error: unrecognized arguments: --profil quick"),
        (["study", "graft", "--data-dir", "/nonexistent"], "--data-dir /nonexistent: no such directory"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(arguments, message, capsys, tmp_path: Path):
    try:
        code = main([*arguments, "--out", str(tmp_path / "out"), "--no-progress"])
    except SystemExit as exited:  # argument errors
        code = exited.code
    assert code == 2
    error = capsys.readouterr().err  # log lines may come first: an earlier test may have left a handler
    assert len([line for line in error.splitlines() if ": error: " in line]) == 1
    assert message in error
    assert "Traceback" not in error


def test_publish_copies_tables_plots_and_settings_but_no_weights(finished, tmp_path: Path):
    _, out, _ = finished
    written = study_run.publish(out, tmp_path / "published")
    names = sorted(path.name for path in written)
    assert names == [
        "accuracy_latency_fashion-mnist.png",
        "attributions_fashion-mnist.png",
        "config.yaml",
        "environment.json",
        "results.csv",
        "results.json",
        "results.md",
        "training_curves_fashion-mnist.png",
    ]
    assert (tmp_path / "published" / "results.md").read_text() == (out / "results.md").read_text()


def test_a_failing_attributions_figure_costs_neither_the_tables_nor_the_study(
    finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path, _, rows = finished
    out = copy_of(finished, tmp_path)
    (out / "attributions_fashion-mnist.png").unlink()
    (out / "results.json").unlink()

    def fail(*args, **kwargs):
        raise MemoryError("no room for the figure")

    monkeypatch.setattr(study_run, "plot_attributions", fail)
    options = StudyOptions(out=out, resume=True, progress=False, command="test")
    assert run_study(load_study(str(path)), options) == rows  # every run reused, then the figure fails
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 4
    assert "attributions" not in (out / "results.md").read_text()
    assert not (out / "attributions_fashion-mnist.png").exists()
    assert "the attributions figure failed: MemoryError: no room for the figure" in (out / "study.log").read_text()
