from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError
from attngraft.explain import (
    METHODS,
    AttributionSettings,
    ClassLogits,
    ExplainSettings,
    attribute,
    default_gradcam_layer,
)
from attngraft.explain.attribution import randomized_copy
from attngraft.explain.explainer import with_black_baseline
from attngraft.explain.inputs import load_network, official_test_samples
from attngraft.grafting import build
from attngraft.models import create_model

REGION = (slice(8, 20), slice(4, 14))  # rows 8–19, cols 4–13 of a 28×28 image


class RegionOnly(nn.Module):
    """A CNN that sees only :data:`REGION` of its input (everything else is multiplied by zero)."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, 28, 28)
        mask[..., REGION[0], REGION[1]] = 1
        self.register_buffer("mask", mask)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.ReLU())
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x * self.mask))


def _inside(maps: torch.Tensor, margin: int) -> torch.Tensor:
    """The share of each map's absolute mass inside the region grown by ``margin`` pixels."""
    rows, cols = REGION
    grown = maps.abs()[
        :, max(rows.start - margin, 0) : rows.stop + margin, max(cols.start - margin, 0) : cols.stop + margin
    ]
    return grown.sum(dim=(1, 2)) / maps.abs().sum(dim=(1, 2))


@pytest.mark.parametrize("method", METHODS.names())
def test_attributions_have_the_image_shape_and_concentrate_where_the_model_looks(method: str) -> None:
    torch.manual_seed(0)
    model = ClassLogits(RegionOnly()).eval()
    images = torch.randn(4, 1, 28, 28)
    targets = torch.tensor([0, 1, 2, 0])
    maps = attribute(model, images, targets, method, AttributionSettings(steps=8, occlusion_window=4))
    assert maps.shape == (4, 28, 28)
    assert torch.isfinite(maps).all()
    assert (maps.abs().sum(dim=(1, 2)) > 0).all()
    # Gradients stop at the mask; GradCAM's 3×3 conv reaches one pixel out; an occluding patch spans 4.
    margin = {"gradcam": 1, "occlusion": 3}.get(method, 0)
    assert (_inside(maps, margin) > 0.99).all()


def test_the_default_gradcam_layer_is_the_last_spatial_conv_stage() -> None:
    image = torch.randn(1, 1, 28, 28)
    resnet = ClassLogits(create_model("resnet18", in_chans=1))
    assert default_gradcam_layer(resnet, torch.randn(1, 1, 64, 64)) == "network.layer4"  # 2×2
    assert default_gradcam_layer(resnet, image) == "network.layer3"  # layer4 is 1×1 at 28×28: nothing to locate
    assert default_gradcam_layer(ClassLogits(create_model("vit", patch_size=7)), image) == "network.patch_embed"
    head = build(
        {
            "backbone": "attngraft/resnet18",
            "in_chans": 1,
            "num_classes": 10,
            "image_size": 28,
            "graft": [{"mode": "head", "block": "graph", "stage": "layer2", "embed_dim": 32}],
        }
    )
    assert default_gradcam_layer(ClassLogits(head), image) == "network.grafts.head.patch_embed"
    with pytest.raises(ConfigError, match="not a module"):
        attribute(
            ClassLogits(head).eval(), image, torch.tensor([0]), "gradcam", AttributionSettings(gradcam_layer="nope")
        )


def _rank_correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps' absolute values."""
    ranks = [values.abs().flatten().argsort().argsort().float() for values in (first, second)]
    centred = [rank - rank.mean() for rank in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


@pytest.mark.parametrize("method", ["ig", "saliency", "gradcam"])
def test_attributions_change_when_the_trained_weights_are_reinitialised(trained_run, fashion_mnist_dir, method) -> None:
    """The model-randomisation check (Adebayo et al. 2018) on a trained network and real images."""
    network = load_network(trained_run / "checkpoints" / "last.ckpt")
    datamodule = ImageDataModule(data_dir=fashion_mnist_dir, num_workers=0, cache_images=False)
    images = torch.stack([sample.image for sample in official_test_samples(datamodule, 4, 0)])
    targets = torch.tensor([0, 1, 2, 3])
    settings = AttributionSettings(steps=8)
    trained = attribute(ClassLogits(network).eval(), images, targets, method, settings)
    again = attribute(ClassLogits(network).eval(), images, targets, method, settings)
    randomised = attribute(ClassLogits(randomized_copy(network)).eval(), images, targets, method, settings)
    torch.testing.assert_close(again, trained)  # deterministic, so a change below is the weights' doing
    correlations = [_rank_correlation(trained[index], randomised[index]) for index in range(4)]
    assert max(correlations) < 0.6, correlations


def test_randomized_copy_redraws_every_parameter_and_keeps_the_original() -> None:
    model = create_model("vit", patch_size=7)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    copy = randomized_copy(model, seed=1)
    for name, parameter in copy.named_parameters():
        if parameter.numel() > 1 and original[name].std() > 0:
            assert not torch.equal(parameter, original[name]), name
    assert all(torch.equal(value, original[name]) for name, value in model.state_dict().items())


def test_the_black_baseline_gives_black_pixels_no_attribution() -> None:
    statistics = ((0.2860,), (0.3530,))
    settings = with_black_baseline(ExplainSettings(methods=["ig", "occlusion"]), statistics, channels=1)
    (black,) = settings.attribution.baseline
    assert black == pytest.approx(-0.2860 / 0.3530)
    torch.manual_seed(0)
    images = torch.randn(2, 1, 28, 28)
    images[:, :, 10:18, 5:13] = black  # an 8×8 black square inside the region the model sees
    model = ClassLogits(RegionOnly()).eval()
    targets = torch.tensor([0, 1])
    from_black = attribute(model, images, targets, "ig", settings.attribution)
    from_mean = attribute(model, images, targets, "ig", AttributionSettings())
    assert from_black[:, 10:18, 5:13].abs().max() == 0
    assert from_mean[:, 10:18, 5:13].abs().min() > 0  # from the mean image the black square does count
    occlusion = attribute(model, images, targets, "occlusion", replace(settings.attribution, occlusion_window=4))
    assert occlusion[:, 13:15, 8:10].abs().max() == 0  # every 4×4 patch over these pixels is black already
    assert occlusion[:, 8:20, 4:14].abs().sum() > 0
    rgb = with_black_baseline(ExplainSettings(), statistics, channels=3).attribution.baseline
    assert rgb == (black,) * 3  # grey statistics, images replicated to three channels
    with pytest.raises(ValueError, match="baseline has 1 channel values, the images 3 channels"):
        attribute(model, torch.randn(1, 3, 28, 28), torch.tensor([0]), "ig", settings.attribution)


def test_attributing_leaves_no_hooks_and_keeps_the_mode() -> None:
    network = create_model("vit", patch_size=7).train()
    model = ClassLogits(network)
    hooks = [(list(module._forward_hooks), list(module._forward_pre_hooks)) for module in network.modules()]
    for method in METHODS.names():
        attribute(model.eval(), torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), method, AttributionSettings(steps=4))
    assert [(list(module._forward_hooks), list(module._forward_pre_hooks)) for module in network.modules()] == hooks
