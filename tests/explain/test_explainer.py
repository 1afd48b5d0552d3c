from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from attngraft.cli import main
from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError, WeightsError
from attngraft.explain import ExplainSettings, explain_images
from attngraft.explain.inputs import data_settings, load_network, official_test_samples
from attngraft.grafting import build

FAST = ["--steps", "4", "--no-progress"]


def _checkpoint(run: Path) -> str:
    return str(run / "checkpoints" / "last.ckpt")


def test_explain_draws_attributions_and_attention_for_test_images(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    assert main(["explain", "--ckpt_path", _checkpoint(trained_run), "--out", str(out), "--images", "3", *FAST]) == 0
    entries = json.loads((out / "explanations.json").read_text())
    assert [entry["image"] for entry in entries] == ["test_00000", "test_00001", "test_00002"]
    for entry in entries:
        assert (out / entry["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert entry["panels"][:4] == ["Integrated Gradients", "Saliency", "Occlusion", "GradCAM"]
        assert entry["panels"][4] == "rollout, 2 layers"  # the graph head's two layers
        assert entry["panels"][5].endswith("(query +)")  # the inserted non-local block, at the query pixel
        assert entry["query"] is not None
    # The figures explain what the checkpoint's network predicts, on the run's data (its config.yaml).
    network = load_network(_checkpoint(trained_run))
    datamodule = ImageDataModule(**data_settings(None, _checkpoint(trained_run)), num_workers=0)
    samples = official_test_samples(datamodule, 3, 0)
    with torch.no_grad():
        predictions = network(torch.stack([sample.image for sample in samples])).argmax(dim=-1)
    assert [entry["prediction"] for entry in entries] == predictions.tolist()
    assert [entry["label"] for entry in entries] == [sample.label for sample in samples]
    assert entries[0]["label_name"] == "Ankle boot"


def test_explain_per_class_grids_and_image_files(trained_run: Path, tmp_path: Path) -> None:
    grids = tmp_path / "grids"
    command = ["explain", "--ckpt_path", _checkpoint(trained_run), "--out", str(grids), "--per-class", "2"]
    assert main([*command, "--methods", "saliency,attention", *FAST]) == 0
    figures = sorted(path.name for path in grids.glob("*.png"))
    assert len(figures) == 10
    assert figures[0] == "class_00_t_shirt_top.png"
    entries = json.loads((grids / "explanations.json").read_text())
    assert [entry["label"] for entry in entries].count(7) == 2
    assert {entry["figure"] for entry in entries if entry["label"] == 7} == {"class_07_sneaker.png"}

    picture = tmp_path / "my shoe.png"
    Image.fromarray((torch.rand(40, 30) * 255).byte().numpy()).save(picture)  # another size: resized to 28×28
    files = tmp_path / "files"
    command = ["explain", "--ckpt_path", _checkpoint(trained_run), "--out", str(files), "--paths", str(picture)]
    assert main([*command, "--methods", "gradcam,attention", "--query", "3,4", *FAST]) == 0
    (entry,) = json.loads((files / "explanations.json").read_text())
    assert entry["image"] == "my shoe"
    assert entry["label"] is None
    assert entry["query"] == [3, 4]
    assert (files / "my shoe.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--methods", "ig,shap"], "unknown ['shap']; valid: gradcam, ig, occlusion, saliency, attention"),
        (["--query", "top"], "--query 'top': expected ROW,COL"),
        (["--query", "30,2"], "outside the 28×28 image"),
        (["--images", "0"], "--images 0: expected a positive integer"),
        (["--steps", "100000"], "--steps 100000: expected at most 4,096"),
        (["--out", "rgb.yaml"], "--out rgb.yaml: an existing file, expected a directory"),
        (["--config", "missing.yaml"], "config missing.yaml: no such file"),
        (["--paths", "missing.png"], "image missing.png: cannot read it"),
        (["--per-class", "2", "--images", "3"], "--per-class picks test images itself"),
        (["--config", "rgb.yaml"], "trained on 1-channel images of 10 classes, but the data of rgb.yaml"),
        (["--methods", "gradcam", "--gradcam-layer", "grafts.head.layers"], "not a (channels, height, width) map"),
    ],
)
def test_explain_user_errors_exit_2_with_one_line(
    trained_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("rgb.yaml").write_text(yaml.safe_dump({"data": {"dataset": "fashion-mnist", "channels": 3}}))
    command = ["explain", "--ckpt_path", _checkpoint(trained_run), "--out", str(tmp_path / "out"), *FAST, *arguments]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "out" / "explanations.json").exists()


def test_checkpoints_that_are_not_attngraft_runs_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["explain", "--ckpt_path", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt does not exist" in capsys.readouterr().err
    weights = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2)}, weights)
    with pytest.raises(WeightsError, match="no hyper_parameters"):
        load_network(weights)
    code = tmp_path / "code.ckpt"
    torch.save({"hyper_parameters": {}, "callback": ConfigError("x")}, code)  # an arbitrary pickled object
    with pytest.raises(WeightsError, match="refused to load it"):
        load_network(code)


def test_explaining_restores_the_mode_and_works_on_a_grafted_timm_backbone() -> None:
    spec = {
        "backbone": "timm/resnet18",
        "in_chans": 1,
        "num_classes": 10,
        "image_size": 32,
        "graft": [{"mode": "insert", "block": "non_local", "after": "layer2"}],
    }
    network = build(spec).train()
    explanations = explain_images(
        network, torch.randn(2, 1, 32, 32), ExplainSettings(methods=["saliency", "attention"])
    )
    assert network.training
    assert [panel.title for panel in explanations[0].panels] == ["Saliency", "insert_layer2.block (query +)"]
    assert explanations[0].panels[1].values.shape == (32, 32)
    assert explanations[0].panels[1].values.min() >= 0  # probabilities, upsampled


def test_unknown_methods_are_rejected_before_any_work() -> None:
    with pytest.raises(ConfigError, match="valid: gradcam, ig, occlusion, saliency, attention"):
        ExplainSettings(methods=["lime"])
