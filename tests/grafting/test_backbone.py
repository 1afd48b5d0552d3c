import pytest
import torch
from torch import nn

from attngraft.errors import SpecError, UnknownNameError
from attngraft.grafting.backbone import (
    create_backbone,
    forward_until,
    list_stages,
    probe_features,
    probe_sample,
    split_name,
)

BACKBONES = [
    "torchvision/resnet18",
    "torchvision/mobilenet_v3_small",
    "timm/resnet18",
    "timm/efficientnet_b0",
    "attngraft/resnet18",
]


def test_torchvision_stages_are_the_last_module_at_each_stride() -> None:
    stages = list_stages(create_backbone("torchvision/resnet18"), in_chans=3)
    assert [(stage.name, stage.channels, stage.reduction) for stage in stages] == [
        ("relu", 64, 2),
        ("layer1", 64, 4),
        ("layer2", 128, 8),
        ("layer3", 256, 16),
        ("layer4", 512, 32),
    ]


@pytest.mark.parametrize("name", ["timm/resnet18", "attngraft/resnet18"])
def test_feature_info_names_the_same_stages_as_torchvision(name: str) -> None:
    stages = list_stages(create_backbone(name), in_chans=3)
    assert [(stage.name, stage.channels, stage.reduction) for stage in stages][-4:] == [
        ("layer1", 64, 4),
        ("layer2", 128, 8),
        ("layer3", 256, 16),
        ("layer4", 512, 32),
    ]


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_until_matches_the_traced_forward_at_every_stage(name: str) -> None:
    model = create_backbone(name).eval()
    stages = list_stages(model, in_chans=3, image_size=64)
    sample = probe_sample(model, in_chans=3, image_size=64)
    traced = probe_features(model, [stage.name for stage in stages], sample)
    for stage in stages:
        with torch.no_grad():
            truncated = forward_until(model, stage.name, sample)
        assert truncated.shape[1] == stage.channels, stage
        assert 64 // truncated.shape[-1] == stage.reduction, stage
        torch.testing.assert_close(truncated, traced[stage.name], msg=f"{name} at {stage.name}")


def test_probing_leaves_mode_and_running_statistics_alone() -> None:
    model = create_backbone("torchvision/resnet18").train()
    before = model.bn1.running_mean.clone()
    probe_features(model, ["layer2"], probe_sample(model, in_chans=3, image_size=64))
    assert model.training
    assert torch.equal(model.bn1.running_mean, before)


def test_torchvision_stem_is_rebuilt_for_other_input_channels() -> None:
    model = create_backbone("torchvision/resnet18", in_chans=1, num_classes=10)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_unknown_backbones_and_sources_are_named() -> None:
    with pytest.raises(UnknownNameError, match=r"resnet18"):
        create_backbone("torchvision/resnet19")
    with pytest.raises(SpecError, match=r"source one of \['torchvision', 'timm', 'attngraft'\]"):
        split_name("keras/resnet18")


def test_unknown_module_lists_the_stages() -> None:
    model = create_backbone("torchvision/resnet18")
    with pytest.raises(SpecError, match=r"no module 'layer5'.*layer4 \(512 ch, /32\)"):
        probe_features(model, ["layer5"], probe_sample(model, in_chans=3, image_size=64))


def test_forward_until_refuses_to_stop_inside_a_non_sequential_module() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3)})

    with pytest.raises(SpecError, match=r"not an nn.Sequential"):
        forward_until(Wrapper(), "body.conv", torch.randn(1, 3, 8, 8))
