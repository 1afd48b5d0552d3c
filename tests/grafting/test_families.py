"""Backbone families that grafting must get right or refuse clearly: conv classifiers, auxiliary outputs,
channels-last maps, multi-branch stages, in-place operations after a stage."""

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

from attngraft.errors import SpecError
from attngraft.grafting import GraftedModel, Head, Insert, graft, list_stages
from attngraft.grafting.backbone import classifier_name, map_layout, probe_features, probe_sample

IMAGE = 64


def images(size: int = IMAGE, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(3))


def train_steps(model: GraftedModel, batch: torch.Tensor, steps: int = 2) -> None:
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(batch)
        assert isinstance(logits, torch.Tensor)
        assert logits.shape == (batch.shape[0], 10)
        nn.functional.cross_entropy(logits, torch.arange(batch.shape[0]) % 10).backward()
        optimizer.step()


def frozen_state(model: GraftedModel) -> dict[str, torch.Tensor]:
    new = tuple(f"{name}." for name in model.new_modules)
    return {key: value.clone() for key, value in model.backbone.state_dict().items() if not key.startswith(new)}


def changed(model: GraftedModel, before: dict[str, torch.Tensor]) -> list[str]:
    state = model.backbone.state_dict()
    return [key for key, value in before.items() if not torch.equal(state[key], value)]


# --- classifiers that are 1×1 convolutions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "classifier"),
    [
        (lambda: torchvision.models.squeezenet1_1(weights=None), "classifier.1"),
        (lambda: timm.create_model("dla46_c", pretrained=False), "fc"),
    ],
    ids=["torchvision-squeezenet1_1", "timm-dla46_c"],
)
def test_a_1x1_conv_classifier_is_found_reset_trained_and_no_stage(make: object, classifier: str) -> None:
    backbone = make()  # type: ignore[operator]
    assert classifier_name(backbone) == classifier
    assert isinstance(backbone.get_submodule(classifier), nn.Conv2d)
    stages = list_stages(backbone, in_chans=3, image_size=IMAGE)
    assert stages
    assert not any(stage.name.startswith(classifier.split(".")[0]) for stage in stages), stages
    model = graft(backbone, Insert("se", after=stages[-1].name), num_classes=10, image_size=IMAGE)
    layer = model.backbone.get_submodule(classifier)
    assert isinstance(layer, nn.Conv2d)
    assert layer.out_channels == 10
    assert layer.kernel_size == (1, 1)
    assert model.new_modules == [classifier]
    before, weight = frozen_state(model), layer.weight.detach().clone()
    train_steps(model, images(count=4))
    assert not torch.equal(model.backbone.get_submodule(classifier).weight, weight)  # the new classifier trains
    assert changed(model, before) == []  # the frozen backbone does not
    assert model.eval()(images()).shape == (2, 10)


# --- training forwards with auxiliary outputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "auxiliary"), [("googlenet", IMAGE, ["aux1", "aux2"]), ("inception_v3", 80, ["AuxLogits"])]
)
@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
def test_auxiliary_classifiers_are_turned_off(name: str, size: int, auxiliary: list[str]) -> None:
    backbone = torchvision.models.get_model(name, weights=None, init_weights=False)
    assert backbone.aux_logits
    model = graft(backbone, num_classes=10, image_size=size, freeze="none")
    assert any(f"auxiliary classifiers {', '.join(auxiliary)} turned off" in note for note in model.notes)
    train_steps(model, images(size))  # (B, 10) logits in training mode, not a named tuple
    with torch.no_grad():
        assert model.eval()(images(size)).shape == (2, 10)
    original = model.ungraft()
    assert original.aux_logits
    assert all(isinstance(original.get_submodule(module), nn.Module) for module in auxiliary)


# --- channels-last (B, H, W, C) feature maps --------------------------------------------------------------------


def test_map_layout_reads_the_channel_axis_from_declared_channels_or_the_square_sides() -> None:
    assert map_layout((1, 96, 16, 16)) == "NCHW"
    assert map_layout((1, 16, 16, 96)) == "NHWC"
    assert map_layout((1, 16, 16, 16)) is None
    assert map_layout((1, 16, 16, 16), channels=16) is None
    assert map_layout((1, 8, 4, 8), channels=8) is None  # not square either way
    assert map_layout((1, 4, 4, 8), channels=8) == "NHWC"


def test_torchvision_swin_stages_are_channels_last_and_grafts_permute_around_the_block() -> None:
    torch.manual_seed(0)
    backbone = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    stages = {stage.name: stage for stage in list_stages(backbone, in_chans=3, image_size=IMAGE)}
    assert (stages["features.5"].channels, stages["features.5"].reduction) == (384, 16)
    assert stages["features.5"].layout == "NHWC"
    assert stages["features.5"].size == (4, 4)
    with torch.no_grad():
        expected = backbone(images())
    model = graft(backbone, Insert("se", after="features.5"), image_size=IMAGE).eval()
    inserted = model.grafts["insert_features_5"]
    assert inserted.block.dim == 384
    assert inserted.channels_last
    with torch.no_grad():
        assert torch.equal(model(images()), expected)  # the zero gate leaves the logits exactly as they were
        inserted.gate.fill_(1.0)
        assert not torch.allclose(model(images()), expected)
    assert "channels-last" in model.records[0].detail


def test_a_head_on_a_channels_last_stage_reads_channels() -> None:
    backbone = torchvision.models.swin_t(weights=None)
    model = graft(backbone, Head("mhsa", stage="features.5"), num_classes=10, image_size=IMAGE)
    head = model.grafts["head"]
    assert head.patch_embed.in_channels == 384  # not the map's height
    assert head.num_patches == 16
    assert model.eval()(images()).shape == (2, 10)


def test_timm_swin_stages_are_channels_last_and_take_inserts_and_heads() -> None:
    def make() -> nn.Module:
        options = {"embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8)}
        return timm.create_model("swin_tiny_patch4_window7_224", img_size=IMAGE, window_size=2, **options).eval()

    stages = list_stages(make(), in_chans=3, image_size=IMAGE)
    assert [(stage.channels, stage.reduction, stage.layout) for stage in stages] == [
        (32, 4, "NHWC"),
        (64, 8, "NHWC"),
        (128, 16, "NHWC"),
        (256, 32, "NHWC"),
    ]
    model = graft(make(), Insert("non_local", after="layers.2"), num_classes=10, image_size=IMAGE)
    assert model.grafts["insert_layers_2"].block.dim == 128
    assert model.eval()(images()).shape == (2, 10)
    model = graft(make(), Head("graph", stage="layers.2", num_heads=4), num_classes=10, image_size=IMAGE)
    assert model.grafts["head"].patch_embed.in_channels == 128
    assert model.eval()(images()).shape == (2, 10)


def test_small_swin_with_equal_sides_and_channels_is_resolved_by_a_second_probe() -> None:
    # At 64 px the first stage's map is (1, 16, 16, 16): one probe cannot tell, a larger one can.
    backbone = SwinTransformer([4, 4], 16, [1, 1], [1, 2], [2, 2], num_classes=10)
    stages = list_stages(backbone, in_chans=3, image_size=IMAGE)
    assert stages[0].name == "features.1"
    assert (stages[0].channels, stages[0].layout) == (16, "NHWC")
    model = graft(backbone, Insert("se", after="features.1", reduction=4), image_size=IMAGE)
    assert model.grafts["insert_features_1"].channels_last
    assert model.eval()(images()).shape == (2, 10)


# --- stages that return tuples, lists or dicts ------------------------------------------------------------------


class Branches(nn.Module):
    """Two resolutions side by side, as HRNet's stages give them."""

    def __init__(self) -> None:
        super().__init__()
        self.high = nn.Conv2d(8, 8, 3, padding=1)
        self.low = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.high(x), self.low(x)


class Fuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Conv2d(16, 8, 1)

    def forward(self, branches: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        high, low = branches
        return high + nn.functional.interpolate(self.up(low), size=high.shape[-2:])


class MultiBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.branches = Branches()
        self.fuse = Fuse()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.fuse(self.branches(self.stem(x)))).flatten(1))


def test_a_stage_that_returns_a_tuple_is_no_stage_and_is_refused_clearly() -> None:
    model = MultiBranch()
    stages = list_stages(model, in_chans=3, image_size=32)
    assert [(stage.name, stage.channels, stage.reduction) for stage in stages] == [("fuse", 8, 2)]
    with pytest.raises(SpecError, match=r"branches returns a tuple of 2 \(\(1, 8, 16, 16\), \(1, 16, 8, 8\)\)"):
        graft(model, Insert("se", after="branches"), image_size=32)
    with pytest.raises(SpecError, match=r"branches returns a tuple of 2"):
        graft(model, Head("mhsa", stage="branches"), image_size=32)
    grafted = graft(model, Insert("se", after="fuse", reduction=2), image_size=32)  # single maps still work
    assert grafted(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_stage_sizes_come_from_real_outputs_not_declared_ones() -> None:
    model = MultiBranch()
    model.feature_info = [{"module": "stem", "num_chs": 99, "reduction": 7}]  # type: ignore[assignment]
    assert [(stage.channels, stage.reduction) for stage in list_stages(model, in_chans=3, image_size=32)] == [(8, 2)]


# --- in-place operations after a stage --------------------------------------------------------------------------


def test_probed_maps_are_not_changed_by_in_place_operations_after_the_stage() -> None:
    # DenseNet's forward runs ReLU(inplace=True) on features' output, which is norm5's output too.
    backbone = torchvision.models.densenet121(weights=None).eval()
    sample = probe_sample(backbone, in_chans=3, image_size=IMAGE)
    probed = probe_features(backbone, ["features.norm5"], sample)["features.norm5"]
    assert (probed < 0).any()  # before the ReLU
    model = graft(backbone, Head("mhsa"), num_classes=10, image_size=IMAGE)
    assert model.head_stage == "features.norm5"
    assert model.eval()(images()).shape == (2, 10)
