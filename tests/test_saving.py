"""attngraft.save / attngraft.load: one directory (model.yaml + model.safetensors), rebuilt offline, same logits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
import yaml
from torch import nn

import attngraft
from attngraft.errors import SavedModelError, WeightsError
from attngraft.grafting import save_weights

IMAGE = 28
# Every graft mode on attngraft's ResNet-18 at 28×28: layer1 gives 7×7 maps, layer2 4×4.
GRAFTED = {
    "backbone": "attngraft/resnet18",
    "in_chans": 1,
    "num_classes": 10,
    "image_size": IMAGE,
    "graft": [
        {"mode": "replace", "block": "local", "stages": ["layer2"], "kernel_size": 3, "num_heads": 4},
        {"mode": "insert", "block": "non_local", "after": "layer1"},
        {"mode": "head", "block": "graph", "stage": "layer2", "num_heads": 4},
    ],
    "freeze": "backbone",
}


def images(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(7))


def perturbed(model: nn.Module) -> nn.Module:
    """Every parameter moved off its initialisation (zero-initialised gates included), so every weight counts."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images())


MODELS = {
    "zoo_resnet18": lambda: attngraft.create_model("resnet18", num_classes=10, in_chans=1),
    "zoo_vit_options": lambda: attngraft.create_model("vit", num_classes=10, in_chans=1, img_size=28, patch_size=7),
    "graft_head_insert_replace": lambda: attngraft.build(GRAFTED),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_load_rebuilds_identical_logits(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = perturbed(MODELS[name]())
    expected = logits(model)
    attngraft.save(model, tmp_path / "saved")
    assert sorted(path.name for path in (tmp_path / "saved").iterdir()) == ["model.safetensors", "model.yaml"]
    torch.manual_seed(1)
    assert not torch.allclose(logits(MODELS[name]()), expected)  # another seed alone gives other logits
    loaded = attngraft.load(tmp_path / "saved")
    assert not loaded.training
    assert torch.equal(logits(loaded), expected)
    trainable = {key for key, parameter in model.named_parameters() if parameter.requires_grad}
    assert {key for key, parameter in loaded.named_parameters() if parameter.requires_grad} == trainable


def test_model_yaml_holds_the_spec_or_the_zoo_config(tmp_path: Path) -> None:
    attngraft.save(attngraft.build(GRAFTED), tmp_path / "graft")
    attngraft.save(attngraft.create_model("vit", in_chans=1, img_size=28, patch_size=7), tmp_path / "zoo")
    graft = yaml.safe_load((tmp_path / "graft" / "model.yaml").read_text())
    zoo = yaml.safe_load((tmp_path / "zoo" / "model.yaml").read_text())
    assert (graft["kind"], graft["format"], graft["attngraft"]) == ("graft", 1, attngraft.__version__)
    saved_grafts = graft["config"]["graft"]
    assert len(saved_grafts) == len(GRAFTED["graft"])
    assert all(saved.items() >= given.items() for saved, given in zip(saved_grafts, GRAFTED["graft"], strict=True))
    assert graft["config"]["backbone"] == "attngraft/resnet18"
    assert zoo["kind"] == "zoo"
    assert zoo["config"] == {
        "name": "vit",
        "num_classes": 10,
        "in_chans": 1,
        "img_size": 28,
        "patch_size": 7,
    }  # defaults filled in


def test_load_in_a_fresh_process_gives_the_same_logits(tmp_path: Path) -> None:
    model = perturbed(attngraft.build(GRAFTED))
    attngraft.save(model, tmp_path / "saved")
    torch.save(images(), tmp_path / "images.pt")
    script = (
        "import sys, torch, attngraft\n"
        "model = attngraft.load(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])\n"
    )
    arguments = [str(tmp_path / "saved"), str(tmp_path / "images.pt"), str(tmp_path / "logits.pt")]
    subprocess.run([sys.executable, "-c", script, *arguments], check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), logits(model))


def test_the_specs_backbone_weights_file_is_not_needed_to_load(tmp_path: Path) -> None:
    weights = save_weights(attngraft.create_model("resnet18", num_classes=10, in_chans=1), tmp_path / "b.safetensors")
    model = perturbed(attngraft.build({**GRAFTED, "weights": str(weights)}))
    attngraft.save(model, tmp_path / "saved")
    weights.unlink()
    assert torch.equal(logits(attngraft.load(tmp_path / "saved")), logits(model))


def test_an_existing_directory_is_kept_unless_overwrite(tmp_path: Path) -> None:
    destination = tmp_path / "saved"
    destination.mkdir()
    attngraft.save(attngraft.create_model("resnet18", num_classes=10, in_chans=1), destination)  # empty: fine
    first = (destination / "model.safetensors").read_bytes()
    vit = attngraft.create_model("vit", num_classes=10, in_chans=1, img_size=28, patch_size=7)
    with pytest.raises(SavedModelError, match="exists and is not empty: pass overwrite=True"):
        attngraft.save(vit, destination)
    assert (destination / "model.safetensors").read_bytes() == first
    attngraft.save(vit, destination, overwrite=True)
    assert yaml.safe_load((destination / "model.yaml").read_text())["config"]["name"] == "vit"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved"]  # no temporary directory left behind
    with pytest.raises(SavedModelError, match="it is a file"):
        attngraft.save(vit, destination / "model.yaml", overwrite=True)


def test_models_attngraft_cannot_rebuild_are_refused(tmp_path: Path) -> None:
    grafted = attngraft.graft(torchvision.models.resnet18(weights=None), [GRAFTED["graft"][1]], image_size=64)
    with pytest.raises(SavedModelError, match=r"grafted onto a ResNet that attngraft cannot rebuild.*save_weights"):
        attngraft.save(grafted, tmp_path / "grafted")
    with pytest.raises(SavedModelError, match="not a Linear: save its weights with"):
        attngraft.save(nn.Linear(2, 3), tmp_path / "linear")
    assert not list(tmp_path.iterdir())


def test_weights_that_do_not_fit_list_every_key(tmp_path: Path) -> None:
    attngraft.save(attngraft.create_model("resnet18", num_classes=10, in_chans=1), tmp_path / "saved")
    path = tmp_path / "saved" / "model.safetensors"
    state = safetensors.torch.load_file(path)
    del state["head.bias"]
    state["head.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, path)
    with pytest.raises(WeightsError) as caught:
        attngraft.load(tmp_path / "saved")
    message = str(caught.value)
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "head.weight: (3, 3) saved, (10, 512) in the model" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("format: 2\nkind: zoo\nconfig: {name: resnet18}\n", "format 2; this attngraft reads format 1"),
        ("format: 1\nkind: lightning\nconfig: {}\n", "kind must be one of \\['zoo', 'graft'\\]"),
        ("format: 1\nkind: zoo\nconfig: resnet18\n", "config must be a mapping"),
        ("[1, 2", "model.yaml: not valid YAML"),
        ("", "model.yaml: an empty file"),
        ("# nothing\n", "model.yaml: holds no YAML content"),
    ],
)
def test_a_bad_model_yaml_is_named(content: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text(content)
    with pytest.raises(SavedModelError, match=message):
        attngraft.load(tmp_path)


def test_missing_directory_or_weights(tmp_path: Path) -> None:
    with pytest.raises(SavedModelError, match=r"no saved model at .*nowhere: not a directory"):
        attngraft.load(tmp_path / "nowhere")
    attngraft.save(attngraft.create_model("resnet18", num_classes=10, in_chans=1), tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").unlink()
    with pytest.raises(SavedModelError, match=r"model\.safetensors is missing"):
        attngraft.load(tmp_path / "saved")
