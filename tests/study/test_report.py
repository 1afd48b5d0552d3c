from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attngraft._io import write_json
from attngraft.models import create_model
from attngraft.study.measure import cpu_latency, environment, model_costs
from attngraft.study.plots import read_epoch_metrics
from attngraft.study.report import markdown_table, summarize


def row(cell: str, seed: int, accuracy: float, **extra) -> dict:
    return {
        "dataset": "d",
        "study_cell": cell,
        "model": cell.upper(),
        "pretrained": "no",
        "attention": "none",
        "epochs": 1,
        "train_images": 1000,
        "seed": seed,
        "test_acc": accuracy,
        "val_acc": accuracy,
        "params_m": 1.0,
        "trainable_params_m": 0.5,
        "gflops": 0.1,
        "latency_ms_b1": 2.0 + seed,
        "train_time_s": 10.0,
        **extra,
    }


def test_summary_averages_seeds_and_gives_the_sample_std():
    summary = summarize([row("a", 0, 0.90), row("b", 0, 0.5), row("a", 1, 0.92), row("a", 2, 0.94)])
    first, second = summary
    assert (first["study_cell"], first["seeds"], second["seeds"]) == ("a", 3, 1)
    assert first["test_acc"] == pytest.approx(0.92)
    assert first["test_acc_std"] == pytest.approx(0.02)
    assert first["latency_ms_b1"] == pytest.approx(3.0)
    assert math.isnan(second["test_acc_std"])


def test_markdown_table_has_one_line_per_cell_with_units():
    table = markdown_table(summarize([row("a", 0, 0.9), row("a", 1, 0.92), row("b", 0, 0.5)]), "d")
    lines = table.splitlines()
    assert lines[0].startswith("| model | pretrained | attention | epochs | train images | test acc (%) |")
    assert "CPU ms/img @1" in lines[0]
    assert lines[2] == "| A | no | none | 1 | 1,000 | 91.00 ± 1.41 (2 seeds) | 1.00 / 0.50 | 0.100 | 2.500 | 10 |"
    assert "50.00 (1 seed)" in lines[3]


def test_json_writes_nan_as_null(tmp_path: Path):
    write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.0, math.inf]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.0, None]}


def test_model_costs_count_parameters_and_flops():
    model = create_model("resnet18", num_classes=10, in_chans=1)
    model.head.requires_grad_(False)
    costs = model_costs(model, (1, 28, 28))
    total = sum(parameter.numel() for parameter in model.parameters())
    assert costs["params_m"] == pytest.approx(total / 1e6)
    assert costs["trainable_params_m"] == pytest.approx((total - 5130) / 1e6)
    linear = torch.nn.Linear(8, 4, bias=False)
    assert model_costs(linear, (8,))["gflops"] == pytest.approx(2 * 8 * 4 / 1e9)


def test_cpu_latency_reports_every_batch_size_and_leaves_the_model_alone():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).train()
    result = cpu_latency(model, (1, 2, 2), [1, 3], repeats=1)
    assert sorted(result) == ["latency_ms_b1", "latency_ms_b3"]
    assert all(value > 0 for value in result.values())
    assert model.training


def test_environment_names_the_machine_and_stack():
    info = environment()
    assert info["cores"] >= 1
    assert info["torch"] == torch.__version__
    assert info["attngraft"]


def test_epoch_metrics_fold_lightning_csv(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss_epoch,val_acc\n0,9,,0.5\n0,9,1.5,\n1,19,,0.7\n")
    assert read_epoch_metrics(path) == {0: {"val_acc": 0.5, "train_loss_epoch": 1.5}, 1: {"val_acc": 0.7}}
    assert read_epoch_metrics(tmp_path / "missing.csv") == {}
