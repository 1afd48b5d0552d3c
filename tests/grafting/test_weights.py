import os
import pickle
from pathlib import Path

import pytest
import torch

from attngraft.errors import WeightsError, WeightsNotFoundError
from attngraft.grafting import build, read_state_dict, save_weights
from attngraft.grafting.backbone import create_backbone
from attngraft.grafting.weights import imagenet_weights

SPEC = {"backbone": "torchvision/resnet18", "num_classes": 10, "image_size": 64}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    source = create_backbone("torchvision/resnet18", num_classes=10)
    path = save_weights(source, tmp_path / f"resnet18{suffix}")
    loaded = build({**SPEC, "weights": str(path)}).backbone.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_save_leaves_no_partial_file_on_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"use one of"):
        save_weights(torch.nn.Linear(2, 2), tmp_path / "weights.npz")
    assert list(tmp_path.iterdir()) == []


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"conv1.weight": _RunsCode(marker)}, handle, protocol=2)
    with pytest.raises(WeightsError, match=r"evil.pt: refused to load it"):
        read_state_dict(path)
    assert not marker.exists()


def test_lightning_checkpoint_with_prefixed_keys_loads(tmp_path: Path) -> None:
    source = create_backbone("torchvision/resnet18", num_classes=10)
    checkpoint = {"epoch": 3, "state_dict": {f"model.{key}": value for key, value in source.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    loaded = build({**SPEC, "weights": str(tmp_path / "last.ckpt")}).backbone
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = create_backbone("torchvision/resnet18", num_classes=10).state_dict()
    state["extra.weight"] = state.pop("layer1.0.conv1.weight")
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): layer1.0.conv1.weight; unexpected keys \(1\): extra"):
        build({**SPEC, "weights": str(tmp_path / "broken.pt")})


def test_shape_mismatch_outside_stem_and_classifier_is_an_error(tmp_path: Path) -> None:
    state = create_backbone("torchvision/resnet18", num_classes=10).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match=r"layer2.0.conv1.weight: \(128, 64, 5, 5\) in the weights"):
        build({**SPEC, "weights": str(tmp_path / "wrong.pt")})


def test_one_channel_input_sums_the_pretrained_filters(tmp_path: Path) -> None:
    source = create_backbone("torchvision/resnet18")
    path = save_weights(source, tmp_path / "rgb.safetensors")
    model = build({**SPEC, "in_chans": 1, "weights": str(path)})
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert any("conv1.weight adapted from 3 to 1 input channels by summing" in note for note in model.notes)
    # 1000 → 10 classes: the classifier stays freshly initialised and trains under freeze: backbone.
    assert model.backbone.fc.weight.shape == (10, 512)
    assert model.backbone.fc.weight.requires_grad
    assert not model.backbone.conv1.weight.requires_grad


def test_corrupt_and_missing_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"bad.safetensors is not a valid safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match=r"bad.pt"):
        read_state_dict(tmp_path / "bad.pt")
    with pytest.raises(WeightsNotFoundError, match=r"absent.pt does not exist"):
        read_state_dict(tmp_path / "absent.pt")


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"resnet18-f37072fd.pth.*download.pytorch.org"):
        build({**SPEC, "weights": "imagenet"})
    source = create_backbone("torchvision/resnet18")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build({**SPEC, "weights": "imagenet"})
    assert torch.equal(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_timm_and_attngraft_imagenet_weights_fail_clearly_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"timm/resnet18.*huggingface.co/timm/resnet18"):
        imagenet_weights("timm", "resnet18")
    with pytest.raises(WeightsError, match=r"no published ImageNet weights; pass a weights file"):
        imagenet_weights("attngraft", "resnet18")


def test_stem_weights_are_adapted_only_from_rgb_filters_of_the_same_size(tmp_path: Path) -> None:
    gray = create_backbone("torchvision/resnet18", in_chans=1, num_classes=10)
    path = save_weights(gray, tmp_path / "gray.safetensors")
    with pytest.raises(
        WeightsError, match=r"conv1.weight: \(64, 1, 7, 7\) in the weights, \(64, 3, 7, 7\) in the model"
    ):
        build({**SPEC, "weights": str(path)})


def test_text_file_named_pt_is_reported(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("just some text\n")
    with pytest.raises(WeightsError, match=r"notes\.pt"):
        read_state_dict(tmp_path / "notes.pt")
