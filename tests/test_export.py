"""attngraft export: grafted models (head, insert, replace) as torch.export, TorchScript and ONNX, equal to eager."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import attngraft
from attngraft import export
from attngraft.cli import main
from attngraft.data import ImageDataModule
from attngraft.errors import ConfigError, ExportError
from attngraft.export import FORMATS, dataset_images, export_model, load_network
from attngraft.train import ImageClassifier, create_trainer

# Every graft mode on attngraft's ResNet-18 at Fashion-MNIST's 28×28 (layer1 gives 7×7 maps): the second block's
# 3×3 convolutions become local attention, a non-local block runs from a hook after the first, a graph head reads
# layer1. Small, so each export takes seconds.
GRAFTED = {
    "backbone": "attngraft/resnet18",
    "in_chans": 1,
    "num_classes": 10,
    "image_size": 28,
    "graft": [
        {"mode": "replace", "block": "local", "stages": ["layer1.1"], "kernel_size": 3, "num_heads": 4},
        {"mode": "insert", "block": "non_local", "after": "layer1.0"},
        {"mode": "head", "block": "graph", "stage": "layer1", "num_heads": 4, "embed_dim": 64},
    ],
    "freeze": "backbone",
}
SUFFIXES = {"exported": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}


@pytest.fixture(scope="module")
def grafted() -> nn.Module:
    """The grafted model with every parameter moved off its initialisation (the insert's zero gate included)."""
    torch.manual_seed(0)
    model = attngraft.build(GRAFTED)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def images(grafted: nn.Module, fashion_mnist_dir: Path) -> torch.Tensor:
    return dataset_images(grafted, data_dir=fashion_mnist_dir, count=5)


def run_file(path: Path, format: str, batch: torch.Tensor) -> torch.Tensor:
    """Runs an exported file with its own runtime (onnxruntime for ONNX), independently of export_model."""
    if format == "onnx":
        return export.run_onnx(path, (batch,))[0]
    if format == "torchscript":
        return torch.jit.load(str(path))(batch)
    return torch.export.load(path).module()(batch)


@pytest.mark.parametrize("format", FORMATS)
def test_grafted_model_exports_equal_to_eager_on_real_images(
    format: str, grafted: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    assert images.shape == (5, 1, 28, 28)
    assert images.std() > 0.5
    path = tmp_path / f"model{SUFFIXES[format]}"
    report = export_model(grafted, path, format=format, images=images[:4])
    assert report.path == path
    assert path.is_file()
    assert report.max_abs_diff <= 1e-4
    assert (report.input_shape, report.batch_sizes) == ((1, 28, 28), (4, 1))
    with torch.no_grad():
        expected = grafted(images[1:4])
        exported = run_file(path, format, images[1:4])  # a batch size the export was neither traced nor checked at
    assert exported.shape == (3, 10)
    assert (exported - expected).abs().max() <= 1e-4
    without_insert = copy.deepcopy(grafted)
    with torch.no_grad():
        without_insert.grafts["insert_layer1_0"].gate.zero_()
        assert (without_insert(images[1:4]) - exported).abs().max() > 1e-3  # the hook's block is in the file


def test_a_file_that_differs_from_eager_is_not_written(
    grafted: nn.Module, images: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = export._RUNNERS["torchscript"]
    monkeypatch.setitem(
        export._RUNNERS, "torchscript", lambda path, batches: [out + 1e-3 for out in runner(path, batches)]
    )
    with pytest.raises(ExportError, match=r"differs from the eager model by 0\.001 \(more than 0\.0001\)"):
        export_model(grafted, tmp_path / "model.pt", format="torchscript", images=images[:2])
    assert not list(tmp_path.iterdir())  # neither the file nor a temporary one


def test_bad_requests_are_named(grafted: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ConfigError, match="expected one of \\['exported', 'torchscript', 'onnx'\\]"):
        export_model(grafted, tmp_path / "m.x", format="tflite", images=images)
    with pytest.raises(ConfigError, match=r"name it m\.pt2"):
        export_model(grafted, tmp_path / "m.pt", format="exported", images=images)
    with pytest.raises(ConfigError, match="at least two check images"):
        export_model(grafted, tmp_path / "m.pt", format="torchscript", images=images[:1])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"pip install 'attngraft\[export\]'"):
        export_model(grafted, tmp_path / "m.onnx", format="onnx", images=images)
    with pytest.raises(ConfigError, match="no such directory"):
        load_network(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"cannot run on check images of shape \(3, 28, 28\) \(C, H, W\): "):
        export_model(grafted, tmp_path / "m.pt", format="torchscript", images=torch.zeros(2, 3, 28, 28))
    assert not (tmp_path / "m.pt").exists()


def test_cli_exports_a_saved_model_and_a_checkpoint(
    tmp_path: Path, fashion_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    classifier = ImageClassifier("mnist_cnn", num_classes=10, in_chans=1)
    data = ImageDataModule(data_dir=fashion_mnist_dir, batch_size=16, train_size=32, val_size=16, num_workers=0)
    trainer = create_trainer(
        max_steps=1, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(classifier, datamodule=data)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    attngraft.save(classifier.network, tmp_path / "saved")
    data_dir = ["--data-dir", str(fashion_mnist_dir), "--images", "3"]
    for source, out in (("saved", "saved.pt"), ("model.ckpt", "ckpt.pt")):
        code = main(
            ["export", str(tmp_path / source), "--format", "torchscript", "--out", str(tmp_path / out), *data_dir]
        )
        assert code == 0
        printed = capsys.readouterr().out
        assert f"wrote {tmp_path / out} (torch.jit.trace; input N x 1x28x28, batch dimension dynamic)" in printed
        assert "max abs diff from eager PyTorch: " in printed
        assert "at batch sizes [3, 1]" in printed
    batch = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = classifier.network.eval()(batch)
        for out in ("saved.pt", "ckpt.pt"):
            assert (torch.jit.load(str(tmp_path / out))(batch) - expected).abs().max() <= 1e-5
    assert main(["export", str(tmp_path / "nowhere"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "no such directory (attngraft.save) or checkpoint file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "saved"), "--format", "exported", "--out", str(tmp_path / "m.onnx")]) == 2
    assert f"--out {tmp_path / 'm.onnx'}: expected a .pt2 file for --format exported" in capsys.readouterr().err
