"""Study files name only classes of the expected kind: nothing else is imported or called."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from torchvision.transforms import v2

from attngraft.cli import main
from attngraft.errors import ConfigError
from attngraft.study.objects import AUGMENTATION, CALLBACK, build_object, build_objects

from .conftest import tiny_study


def shell(marker: Path) -> dict:
    return {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}


def test_allowed_classes_are_built_with_their_arguments() -> None:
    crop = build_object(
        {"class_path": "torchvision.transforms.v2.RandomCrop", "init_args": {"size": 8}}, "x", AUGMENTATION
    )
    assert isinstance(crop, v2.RandomCrop)
    assert crop.size == (8, 8)
    stop = build_object(
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val_acc"}}, "x", CALLBACK
    )
    assert isinstance(stop, L.Callback)
    assert build_objects(None, "x", CALLBACK) == []


@pytest.mark.parametrize("kind", [AUGMENTATION, CALLBACK], ids=["augmentation", "callback"])
@pytest.mark.parametrize(
    "class_path",
    [
        "os.system",  # a function outside the allowed packages: refused before importing anything
        "subprocess.Popen",
        "builtins.eval",
        "antigravity.X",  # importing it would open a browser: never imported
        "attngraft.cli.main",  # inside an allowed package, but a function: imported, never called
        "torchvision.transforms.v2.functional.to_image",
        "system",
    ],
)
def test_anything_else_is_refused_without_side_effect(class_path: str, kind, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    entry = {"class_path": class_path, "init_args": {"command": f"touch {marker}"}}
    with pytest.raises(ConfigError, match=re.escape(f"x.class_path: '{class_path}' is not allowed: {kind.noun}s are")):
        build_object(entry, "x", kind)
    assert not marker.exists()
    assert "antigravity" not in sys.modules


def test_the_wrong_kind_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("callbacks are lightning.pytorch.callbacks.callback.Callback subclasses")
    ):
        build_object({"class_path": "attngraft.train.callbacks.AtomicCheckpointIO"}, "x", CALLBACK)
    with pytest.raises(ConfigError, match=re.escape("augmentations are torch.nn.modules.module.Module subclasses")):
        build_object({"class_path": "lightning.pytorch.callbacks.EarlyStopping"}, "x", AUGMENTATION)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("RandomCrop", "x: expected {class_path: ..., init_args: {...}}, got 'RandomCrop'"),
        ({"class_path": "torchvision.transforms.v2.RandomCrop", "args": {}}, "x: unknown key 'args'"),
        ({"class_path": "torchvision.transforms.v2.RandomCrop", "init_args": [8]}, "x.init_args: expected a mapping"),
        ({"class_path": "torchvision.transforms.v2.RandomCrop", "init_args": {"side": 8}}, "x: cannot build"),
        ({"class_path": "torchvision.transforms.v3.RandomCrop"}, "x.class_path: cannot import"),
    ],
)
def test_malformed_entries_are_named(entry, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_object(entry, "x", AUGMENTATION)


@pytest.mark.parametrize("key", ["train_augment", "callbacks"])
def test_a_study_naming_os_system_stops_with_one_line_and_runs_nothing(
    key: str, tmp_path: Path, fashion_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    study = tiny_study(fashion_mnist_dir)
    if key == "train_augment":
        study["data"]["train_augment"] = [shell(marker)]
    else:
        study["trainer"]["callbacks"] = [shell(marker)]
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--cells", "base"]) == 2
    error = capsys.readouterr().err
    assert "'os.system' is not allowed" in error
    assert "Traceback" not in error
    assert not marker.exists()


@pytest.mark.parametrize("case", ["mismatched keys", "pickled code", "unknown suffix", "random bytes"])
def test_backbone_weights_are_checked_before_any_cell_trains(
    case: str, tmp_path: Path, fashion_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    import safetensors.torch
    import torch

    files = {
        "mismatched keys": tmp_path / "other.safetensors",
        "pickled code": tmp_path / "code.pt",
        "unknown suffix": tmp_path / "weights.txt",
        "random bytes": tmp_path / "random.pt",
    }
    safetensors.torch.save_file({"fc.weight": torch.ones(2, 2)}, files["mismatched keys"])
    torch.save({"w": torch.ones(1), "hook": subprocess.Popen}, files["pickled code"])
    files["unknown suffix"].write_text("weights")
    files["random bytes"].write_bytes(bytes(range(256)))
    messages = {
        "mismatched keys": "fc.weight",
        "pickled code": "refused to load it",
        "unknown suffix": "unknown format '.txt'",
        "random bytes": "corrupt or not a torch file",
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study(fashion_mnist_dir)))
    out = tmp_path / "out"
    arguments = ["study", str(path), "--out", str(out), "--no-progress", "--backbone-weights", str(files[case])]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert messages[case] in error
    assert str(files[case]) in error
    assert "Traceback" not in error
    assert not list(out.rglob("result.json"))  # nothing trained
    assert not list(out.rglob("metrics.csv"))
