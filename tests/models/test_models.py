"""Every registered model: shapes, gradients, options, state round-trip; published sizes of the classic ones."""

from __future__ import annotations

import copy

import pytest
import torch

from attngraft import create_model, list_models
from attngraft.blocks.local import LocalSelfAttention
from attngraft.errors import UnknownNameError
from attngraft.models import MODELS, count_parameters, flops


def tiny_input(name: str, in_chans: int, batch: int = 2) -> torch.Tensor:
    side = min(MODELS.get(name).image_size, 32)
    torch.manual_seed(1)
    return torch.randn(batch, in_chans, side, side)


@pytest.fixture(params=MODELS.names())
def model_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_forward_backward_reaches_every_parameter(model_name: str, in_chans: int) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=5, in_chans=in_chans)
    out = model(tiny_input(model_name, in_chans))
    assert out.shape == (2, 5)
    out.square().sum().backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"{model_name}: no gradient for {missing}"
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())


def test_state_dict_round_trip(model_name: str) -> None:
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    torch.manual_seed(1)
    other = create_model(model_name).eval()
    x = tiny_input(model_name, MODELS.get(model_name).in_chans)
    assert not torch.allclose(model(x), other(x))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(x), model(x))


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="resnet50"):
        create_model("resnet5O")


def test_list_models_filters() -> None:
    assert list_models("sasa_*") == [name for name in list_models() if name.startswith("sasa_")]
    assert set(list_models(family="resnet")) == {"resnet18", "resnet26", "resnet38", "resnet50"}


# Published parameter counts (millions) at 224×224, 1,000 classes: SASA paper Table 1; torchvision's resnet18;
# ViT-B/16 (ViT paper, timm: 86.57M); DeiT-S distilled (DeiT paper, timm: 22.44M); Swin-T (Swin paper: 28M,
# timm: 28.29M).
PUBLISHED_PARAMS = {
    ("resnet18", ()): 11.69,
    ("resnet26", ()): 13.7,
    ("resnet38", ()): 19.6,
    ("resnet50", ()): 25.6,
    ("sasa_resnet26", ()): 10.3,
    ("sasa_resnet38", ()): 14.1,
    ("sasa_resnet50", ()): 18.0,
    ("vit", (("size", "base"), ("img_size", 224), ("patch_size", 16))): 86.57,
    ("deit", (("size", "small"), ("img_size", 224), ("patch_size", 16))): 22.44,
    ("swin", (("size", "tiny"), ("img_size", 224))): 28.29,
}


@pytest.mark.parametrize(("name", "options"), list(PUBLISHED_PARAMS))
def test_parameter_counts_match_published(name: str, options: tuple[tuple[str, object], ...]) -> None:
    model = create_model(name, num_classes=1000, in_chans=3, **dict(options))
    millions = count_parameters(model) / 1e6
    assert millions == pytest.approx(PUBLISHED_PARAMS[name, options], rel=0.02)


# SASA paper, Table 1, FLOPS ÷ 2 (multiply-adds) at 224×224: the baselines and the conv-stem SASA rows (the
# attention-stem ResNet-50 row is 3.6 G).
PUBLISHED_GMACS = {
    "resnet26": 2.35, "resnet38": 3.25, "resnet50": 4.1,
    "sasa_resnet26": 2.25, "sasa_resnet38": 2.85, "sasa_resnet50": 3.5,
}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLISHED_GMACS))
def test_multiply_adds_match_published(name: str) -> None:
    """The paper computes the relative logits q·r per neighbour (k² per pixel); our blocks compute them as two
    k-long einsums (SASA ResNet-50: 3.40 G in all). Counted the paper's way, each local block adds its q·r
    multiply-adds (N·C·k², a quarter of its elementwise attention FLOPs): 2.25 / 2.87 / 3.50 G for SASA-26/38/50.
    """
    published_gmacs, tolerance = PUBLISHED_GMACS[name], 0.02
    model = create_model(name, num_classes=1000, in_chans=3)
    per_neighbour_relative = 0

    def add_relative(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal per_neighbour_relative
        if isinstance(module, LocalSelfAttention):
            per_neighbour_relative += module.attention_flops(inputs[0].shape) // 4

    meta_model = copy.deepcopy(model).to("meta")  # the hooks need shapes only
    handles = [module.register_forward_pre_hook(add_relative) for module in meta_model.modules()]
    with torch.no_grad():
        meta_model(torch.empty(1, 3, 224, 224, device="meta"))
    for handle in handles:
        handle.remove()
    gmacs = (flops(model, (1, 3, 224, 224)) / 2 + per_neighbour_relative) / 1e9
    assert gmacs == pytest.approx(published_gmacs, rel=tolerance)


def test_sasa_replaces_every_spatial_convolution() -> None:
    model = create_model("sasa_resnet26")
    convs = [
        module
        for module in (module for index in range(1, 5) for module in getattr(model, f"layer{index}").modules())
        if isinstance(module, torch.nn.Conv2d)
    ]
    assert all(conv.kernel_size == (1, 1) for conv in convs)
    assert sum(type(module).__name__ == "LocalSelfAttention" for module in model.modules()) == 1 + 2 + 4 + 1


def test_attention_stem_downsamples_like_the_conv_stem() -> None:
    x = torch.randn(1, 3, 32, 32)
    conv_stem, attention_stem = (create_model("sasa_resnet26", stem=stem).stem for stem in ("imagenet", "attention"))
    assert attention_stem(x).shape == conv_stem(x).shape == (1, 64, 8, 8)


def test_deit_returns_both_heads_when_distilling() -> None:
    model = create_model("deit").train()
    x = tiny_input("deit", 1)
    assert model(x).shape == (2, 10)
    model.distilled_training = True
    logits, logits_dist = model(x)
    assert logits.shape == logits_dist.shape == (2, 10)
    model.eval()
    torch.testing.assert_close(model(x), (logits + logits_dist) / 2)


def test_vit_rejects_patches_that_do_not_tile_the_image() -> None:
    with pytest.raises(ValueError, match="patch_size 5 must divide img_size 28"):
        create_model("vit", patch_size=5)


def test_cifar_style_attention_stem_keeps_the_resolution_like_the_cifar_stem() -> None:
    x = torch.randn(1, 3, 12, 12)
    conv_stem, attention_stem = (create_model("sasa_resnet26", stem=stem).stem for stem in ("cifar", "attention_cifar"))
    assert attention_stem(x).shape == conv_stem(x).shape == (1, 64, 12, 12)
    assert create_model("sasa_resnet26", stem="attention_cifar").feature_info[0]["reduction"] == 1


def test_unknown_sizes_and_stems_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: \\['micro'"):
        create_model("vit", size="gigantic")
    with pytest.raises(ValueError, match="valid: \\['imagenet', 'cifar', 'attention', 'attention_cifar'\\]"):
        create_model("resnet18", stem="tiny")


def test_conv_resnets_refuse_attention_options() -> None:
    with pytest.raises(TypeError, match="only apply to the local attention"):
        create_model("resnet26", kernel_size=5)
    assert create_model("sasa_resnet26", kernel_size=5).layer1[0].conv2.kernel_size == 5


def test_vit_resamples_positions_for_other_input_sizes() -> None:
    model = create_model("vit").eval()
    assert model(torch.randn(2, 1, 42, 35)).shape == (2, 10)
    same = model.position_embedding(*model.grid_size)
    assert same is model.pos_embed
    resampled = model.position_embedding(6, 5)
    assert resampled.shape == (1, 1 + 6 * 5, model.num_features)
    # The class token's position is carried over unchanged.
    torch.testing.assert_close(resampled[:, 0], model.pos_embed[:, 0])


def test_resnet_stochastic_depth_drops_residual_branches_only_in_training() -> None:
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=10, in_chans=1)
    deep = create_model("resnet18", num_classes=10, in_chans=1, drop_path_rate=0.5)
    assert plain.state_dict().keys() == deep.state_dict().keys()  # no new weights: checkpoints interchange
    deep.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    plain.eval()
    deep.eval()
    with torch.no_grad():
        torch.testing.assert_close(deep(x), plain(x))
        deep.train()
        assert not torch.allclose(deep(x), deep(x))
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_model("resnet18", drop_path_rate=1.0)
