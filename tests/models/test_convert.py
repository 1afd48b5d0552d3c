"""Weights from vit-pytorch into attngraft's ViT: the same logits, and clear refusals."""

from __future__ import annotations

import pytest
import torch

from attngraft.models import create_model, load_foreign_weights

vit_pytorch = pytest.importorskip("vit_pytorch", reason="vit-pytorch is a test extra (pip install -e '.[dev]')")

CONFIGS = [
    {"image_size": 28, "patch_size": 7, "dim": 32, "depth": 2, "heads": 4, "dim_head": 16, "mlp_dim": 50,
     "pool": "cls"},
    {"image_size": (28, 21), "patch_size": (7, 3), "dim": 24, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 40,
     "pool": "mean", "channels": 3},
]  # fmt: skip


def ours_for(config: dict, num_classes: int) -> torch.nn.Module:
    return create_model(
        "vit", num_classes=num_classes, in_chans=config.get("channels", 1), img_size=config["image_size"],
        patch_size=config["patch_size"], embed_dim=config["dim"], depth=config["depth"], num_heads=config["heads"],
        dim_head=config["dim_head"], mlp_dim=config["mlp_dim"], pool=config["pool"], patch_embed="linear",
        qkv_bias=False, norm_eps=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=["cls-square", "mean-rectangular"])
def test_vit_pytorch_weights_give_its_logits(config: dict) -> None:
    torch.manual_seed(0)
    peer = vit_pytorch.ViT(num_classes=10, channels=config.get("channels", 1), **{
        key: value for key, value in config.items() if key != "channels"
    }).eval()  # fmt: skip
    ours = ours_for(config, 10).eval()
    loaded = load_foreign_weights(ours, peer.state_dict(), source="vit_pytorch")
    assert set(loaded) == set(ours.state_dict())
    height, width = (config["image_size"],) * 2 if isinstance(config["image_size"], int) else config["image_size"]
    images = torch.randn(3, config.get("channels", 1), height, width)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), peer(images), atol=1e-5, rtol=1e-5)


def test_mismatched_options_are_named() -> None:
    torch.manual_seed(0)
    peer = vit_pytorch.ViT(
        image_size=28, patch_size=7, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=64, channels=1
    )
    ours = create_model("vit", embed_dim=32, depth=1, num_heads=4, mlp_dim=64, patch_embed="linear", qkv_bias=False)
    with pytest.raises(
        ValueError, match=r"layers.0.mixer.qkv.weight: \(768, 32\) in the weights, \(96, 32\) in the model"
    ):
        load_foreign_weights(ours, peer.state_dict(), source="vit_pytorch")  # vit-pytorch's dim_head defaults to 64


def test_unknown_source_and_wrong_model_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown weights source 'vitpytorch'; valid: \['vit_pytorch', 'timm'\]"):
        load_foreign_weights(create_model("vit"), {}, source="vitpytorch")
    with pytest.raises(ValueError, match="vit_pytorch weights load into a VisionTransformer, not a"):
        load_foreign_weights(create_model("mnist_cnn"), {}, source="vit_pytorch")


def test_vit_options_refuse_what_neither_the_model_nor_its_mixer_takes() -> None:
    with pytest.raises(TypeError, match=r"has no option 'mlp_dimm' \(did you mean 'mlp_dim'\?\); valid options: \["):
        create_model("vit", mlp_dimm=100)
    with pytest.raises(ValueError, match=r"pool='max' is not valid; choose one of \['cls', 'mean'\]"):
        create_model("vit", pool="max")
    with pytest.raises(ValueError, match="a distilled model \\(DeiT\\) needs pool='cls'"):
        create_model("deit", pool="mean")


def test_exact_mlp_width_and_head_width() -> None:
    model = create_model("vit", embed_dim=56, num_heads=4, mlp_dim=488, dim_head=20)
    layer = model.layers[0]
    assert layer.mlp.fc1.out_features == 488  # a ratio would truncate 488 / 56 to 487
    assert layer.mixer.qkv.out_features == 3 * 4 * 20
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("distilled", [False, True], ids=["vit", "deit"])
def test_timm_weights_give_its_logits(distilled: bool) -> None:
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    options = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 2,
               "num_heads": 4}  # fmt: skip
    peer = (VisionTransformerDistilled if distilled else TimmViT)(**options).eval()
    with torch.no_grad():  # timm zero-initialises the head and some biases: randomise everything
        for parameter in peer.parameters():
            parameter.normal_(0, 0.2)
    ours = create_model("deit" if distilled else "vit", embed_dim=32, depth=2, num_heads=4).eval()
    load_foreign_weights(ours, peer.state_dict(), source="timm")
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), peer(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("img_size", "depths", "heads"), [(32, (2, 2), (2, 4)), (64, (2, 2, 2), (2, 4, 8))])
def test_timm_swin_weights_give_its_logits(img_size: int, depths: tuple[int, ...], heads: tuple[int, ...]) -> None:
    """Shifted windows, patch merging and the last stage's whole-map window (no shift) as timm has them."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    options = {"img_size": img_size, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 16,
               "depths": depths, "num_heads": heads, "window_size": 4}  # fmt: skip
    peer = SwinTransformer(**options).eval()
    with torch.no_grad():
        for parameter in peer.parameters():
            parameter.normal_(0, 0.2)
    ours = create_model("swin", **options).eval()
    loaded = load_foreign_weights(ours, peer.state_dict(), source="timm")
    assert len(loaded) == len(ours.state_dict())
    images = torch.randn(2, 1, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), peer(images), atol=1e-5, rtol=1e-5)


def test_vit_pytorch_deepvit_weights_give_its_logits() -> None:
    torch.manual_seed(0)
    from vit_pytorch.deepvit import DeepViT

    peer = DeepViT(
        image_size=28, patch_size=7, num_classes=10, dim=32, depth=2, heads=4, dim_head=16, mlp_dim=48, channels=1
    ).eval()
    ours = create_model(
        "deepvit", embed_dim=32, depth=2, num_heads=4, dim_head=16, mlp_dim=48, patch_embed="linear",
        qkv_bias=False, norm_eps=1e-5, norm="layer",
    ).eval()  # fmt: skip
    load_foreign_weights(ours, peer.state_dict(), source="vit_pytorch")
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), peer(images), atol=1e-5, rtol=1e-5)


# The seed's table (MNIST, 10 classes; the hybrid's count needs a 100-class head): parameters in all, and used.
SEED_COUNTS = {
    "mnist_cnn": (1_199_882, 1_199_882),
    "seed_vit": (1_614_866, 1_213_970),
    "seed_deepvit": (1_615_010, 1_214_114),
    "seed_hybrid_vit": (1_591_652, 1_518_436),
}


@pytest.mark.parametrize("name", list(SEED_COUNTS))
def test_the_seed_models_have_the_published_counts(name: str) -> None:
    from attngraft.models import count_parameters, count_used_parameters

    model = create_model(name)
    assert (count_parameters(model), count_used_parameters(model)) == SEED_COUNTS[name]


@pytest.mark.parametrize("name", ["seed_vit", "seed_deepvit"])
def test_the_seed_vits_equal_vit_pytorch_with_its_oversized_position_table(name: str) -> None:
    """vit-pytorch given image_size=784 for 28×28 images: a 3,137-row position table whose first 5 rows are used."""
    from vit_pytorch.deepvit import DeepViT

    torch.manual_seed(0)
    options = {"image_size": 784, "patch_size": 14, "num_classes": 10, "dim": 128, "depth": 6, "heads": 4,
               "mlp_dim": 256, "channels": 1, "dim_head": 64}  # fmt: skip
    peer = (vit_pytorch.ViT if name == "seed_vit" else DeepViT)(**options).eval()
    ours = create_model(name).eval()
    load_foreign_weights(ours, peer.state_dict(), source="vit_pytorch")
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), peer(images), atol=1e-5, rtol=1e-5)


def peers() -> dict[str, torch.nn.Module]:
    """Small peers of every kind convert takes, with random weights."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from vit_pytorch.deepvit import DeepViT

    timm_options = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 2,
                    "num_heads": 4}  # fmt: skip
    return {
        "timm ViT": TimmViT(**timm_options),
        "timm DeiT": VisionTransformerDistilled(**timm_options),
        "timm Swin": SwinTransformer(img_size=32, patch_size=2, in_chans=1, num_classes=10, embed_dim=16,
                                     depths=(2, 2), num_heads=(2, 4), window_size=4),
        "vit-pytorch ViT": vit_pytorch.ViT(image_size=(28, 21), patch_size=(7, 3), num_classes=10, dim=24, depth=2,
                                           heads=2, dim_head=8, mlp_dim=40, channels=3, pool="mean"),
        "vit-pytorch DeepViT": DeepViT(image_size=28, patch_size=7, num_classes=10, dim=32, depth=2, heads=4,
                                       dim_head=16, mlp_dim=48, channels=1),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["timm ViT", "timm DeiT", "timm Swin", "vit-pytorch ViT", "vit-pytorch DeepViT"])
def test_convert_reads_the_configuration_and_gives_the_same_logits(kind: str) -> None:
    from attngraft.models import convert

    torch.manual_seed(0)
    peer = peers()[kind].eval()
    with torch.no_grad():
        for parameter in peer.parameters():
            parameter.normal_(0, 0.2)
    ours = convert(peer, image_size=(28, 21) if kind == "vit-pytorch ViT" else None).eval()
    shape = {"timm Swin": (2, 1, 32, 32), "vit-pytorch ViT": (2, 3, 28, 21)}.get(kind, (2, 1, 28, 28))
    images = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), peer(images), atol=1e-5, rtol=1e-5)


def test_convert_refuses_what_it_cannot_express() -> None:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from attngraft.models import convert

    pooled = TimmViT(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=4,
                     global_pool="avg")  # fmt: skip
    with pytest.raises(ValueError, match=r"global_pool='avg' \(attngraft supports 'token'"):
        convert(pooled)
    scaled = TimmViT(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=4,
                     init_values=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="init_values='LayerScale'"):
        convert(scaled)
    with pytest.raises(ValueError, match=r"cannot convert a torch\.nn\.modules\.linear\.Linear"):
        convert(torch.nn.Linear(2, 2))
    oversized = vit_pytorch.ViT(image_size=784, patch_size=14, num_classes=10, dim=32, depth=1, heads=2,
                                mlp_dim=32, channels=1)  # fmt: skip
    assert convert(oversized, image_size=28)(torch.randn(1, 1, 28, 28)).shape == (1, 10)  # the seed's set-up


def test_emb_dropout_is_separate_from_the_layers_dropout() -> None:
    model = create_model("vit", emb_dropout=0.3, drop_rate=0.1)
    assert model.pos_drop.p == 0.3
    assert model.layers[0].mlp.drop1.p == 0.1
    assert create_model("vit", drop_rate=0.2).pos_drop.p == 0.2  # unset: the layers' rate, as before


def test_position_tables_are_checked_and_oversized_ones_sliced() -> None:
    with pytest.raises(ValueError, match="pos_table_size 10 must hold the 17 tokens"):
        create_model("vit", pos_table_size=10)  # 28×28 in 7×7 patches: 16 patches + the class token
    model = create_model("vit", pos_table_size=40).eval()
    assert model.unused_parameters == (40 - 17) * 64
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(images)
        model.pos_embed[:, 17:] = 1e3  # rows past the tokens change nothing
        assert torch.equal(model(images), expected)
        model.pos_embed[:, 16] = 1e3  # a used row does
        assert not torch.equal(model(images), expected)


def test_a_non_positive_mlp_width_is_refused() -> None:
    with pytest.raises(ValueError, match="mlp_dim must be a positive integer, got -3"):
        create_model("vit", mlp_dim=-3)
