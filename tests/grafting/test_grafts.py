import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import attngraft
from attngraft.errors import SpecError
from attngraft.grafting import build, graft, summarize
from attngraft.grafting.backbone import create_backbone

# torchvision's and timm's ResNet-18 (timm takes the forward_intermediates path), and a timm EfficientNet.
BACKBONES = ["torchvision/resnet18", "timm/resnet18"]
IMAGE = 64


def spec(backbone: str, *grafts: dict[str, object], **extra: object) -> dict[str, object]:
    return {"backbone": backbone, "in_chans": 1, "num_classes": 10, "image_size": IMAGE, "graft": list(grafts), **extra}


def batch(size: int = 2) -> torch.Tensor:
    return torch.randn(size, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def graft_parameter_names(model: attngraft.grafting.GraftedModel) -> set[str]:
    names = set()
    for module_name in (name for record in model.records for name in record.modules):
        names |= {f"{module_name}.{name}" for name, _ in model.get_submodule(module_name).named_parameters()}
    return names


HEAD = {"mode": "head", "block": "graph", "stage": "layer4", "num_heads": 4}
INSERT = {"mode": "insert", "block": "non_local", "after": "layer3"}
REPLACE = {"mode": "replace", "block": "local", "stages": ["layer4"], "kernel_size": 3, "num_heads": 8}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_head_output_and_gradients(backbone: str) -> None:
    model = build(spec(backbone, HEAD))
    logits = model.train()(batch())
    assert logits.shape == (2, 10)
    logits.square().sum().backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert {name for name, p in model.named_parameters() if p.requires_grad} == graft_parameter_names(model)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_head_on_an_earlier_stage_drops_the_later_ones(backbone: str) -> None:
    model = build(spec(backbone, {**HEAD, "stage": "layer3", "patch_size": 2}))
    assert model(batch()).shape == (2, 10)
    assert isinstance(model.backbone.layer4, nn.Identity)
    assert "layer4" in model.dropped
    total = summarize(model).total
    assert total == sum(p.numel() for p in model.parameters())
    original = model.ungraft()
    assert isinstance(original.layer4, nn.Sequential)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_insert_gives_the_original_logits_at_init(backbone: str) -> None:
    torch.manual_seed(0)
    original = create_backbone(backbone, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        expected = original(batch())
    before = backbone_state(original)
    model = graft(original, [INSERT, {"mode": "insert", "block": "cbam", "after": ["layer1", "layer2.1"]}]).eval()
    with torch.no_grad():
        assert torch.equal(model(batch()), expected)
    # The backbone's own keys and values are untouched; the blocks live beside it.
    after = model.backbone.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    # Once a gate moves, the inserted block changes the output: the hooks do run.
    with torch.no_grad():
        model.grafts["insert_layer3"].gate.fill_(1.0)
        assert not torch.allclose(model(batch()), expected)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_replace_keeps_shapes_strides_and_other_weights(backbone: str) -> None:
    original = create_backbone(backbone, num_classes=10, in_chans=1)
    convs = {
        name: (m.in_channels, m.out_channels, m.stride)
        for name, m in original.layer4.named_modules(prefix="layer4")
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    }
    kept = {
        key: value.clone()
        for key, value in original.state_dict().items()
        if not any(key.startswith(f"{name}.") for name in convs)
    }
    model = graft(original, [REPLACE], freeze="none")
    assert len(convs) == 4
    for name, (in_channels, out_channels, stride) in convs.items():
        block = model.backbone.get_submodule(name)
        assert type(block).__name__ == "LocalSelfAttention"
        assert (block.dim, block.out_dim, block.stride) == (in_channels, out_channels, stride[0])
        assert block(torch.randn(1, in_channels, 4, 4)).shape == (1, out_channels, 4 // stride[0], 4 // stride[0])
    state = model.backbone.state_dict()
    assert all(torch.equal(state[key], value) for key, value in kept.items())
    assert model(batch()).shape == (2, 10)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_freeze_backbone_trains_only_the_grafts(backbone: str) -> None:
    model = build(spec(backbone, INSERT, REPLACE))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == graft_parameter_names(model) | {"backbone.fc.weight", "backbone.fc.bias"}
    new_modules = [name for record in model.records for name in record.modules] + ["backbone.fc"]
    frozen = {
        key: value.clone()
        for key, value in model.state_dict().items()
        if not any(key.startswith(f"{module}.") for module in new_modules)
    }
    norms = [m for m in model.train().backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20
    assert not any(m.training for m in norms)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(batch(4)), torch.arange(4)).backward()
        optimizer.step()
    state = model.state_dict()
    changed = [key for key, value in frozen.items() if not torch.equal(state[key], value)]
    assert changed == [], changed  # weights and BatchNorm running statistics bitwise unchanged
    assert model.grafts["insert_layer3"].gate.abs().sum() > 0  # the grafts did train


def test_freeze_stages_and_none() -> None:
    model = build(spec("torchvision/resnet18", INSERT, freeze="stages:conv1,bn1,layer1"))
    assert not model.backbone.layer1[0].conv1.weight.requires_grad
    assert model.backbone.layer2[0].conv1.weight.requires_grad
    assert not model.train().backbone.layer1[0].bn1.training
    assert model.backbone.layer2[0].bn1.training
    model = build(spec("torchvision/resnet18", INSERT, freeze="none"))
    assert all(p.requires_grad for p in model.parameters())
    assert model.frozen_norms == []
    with pytest.raises(SpecError, match=r"no module 'layer9'.*top-level modules"):
        build(spec("torchvision/resnet18", freeze="stages:layer9"))
    with pytest.raises(SpecError, match=r"freeze='all' is not valid"):
        build(spec("torchvision/resnet18", freeze="all"))


def test_ungraft_recovers_the_original_model() -> None:
    original = create_backbone("torchvision/resnet18", num_classes=10, in_chans=1).eval()
    before = backbone_state(original)
    with torch.no_grad():
        expected = original(batch())
    model = graft(original, [REPLACE, INSERT], freeze="backbone")
    recovered = model.ungraft().eval()
    assert recovered is original
    assert recovered.state_dict().keys() == before.keys()
    assert all(torch.equal(recovered.state_dict()[key], value) for key, value in before.items())
    assert all(p.requires_grad for p in recovered.parameters())
    with torch.no_grad():
        assert torch.equal(recovered(batch()), expected)


def test_deepcopy_keeps_each_copy_with_its_own_inserted_blocks() -> None:
    model = build(spec("torchvision/resnet18", INSERT)).eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        expected = model(batch())
        clone.grafts["insert_layer3"].gate.fill_(1.0)
        assert torch.equal(model(batch()), expected)
        assert not torch.allclose(clone(batch()), expected)


@pytest.mark.parametrize(
    ("graft_entry", "message"),
    [
        ({**INSERT, "block": "mhsa"}, "mhsa takes tokens; insert takes map blocks"),
        ({**HEAD, "block": "non_local"}, "non_local takes maps; a head mixes tokens"),
        ({**INSERT, "block": "window", "num_heads": 3}, "insert window after layer3 \\(256 ch, 4×4\\).*num_heads=3"),
        ({**HEAD, "num_heads": 5}, "head graph on layer4 \\(512 ch, 2×2\\).*num_heads=5"),
        ({**HEAD, "patch_size": 3}, "patch_size 3 does not divide the map's side 2"),
        ({**INSERT, "block": "local", "stride": 2}, "turns \\(1, 256, 4, 4\\) into \\(1, 256, 2, 2\\); it must keep"),
        ({**INSERT, "after": "layer5"}, "no module 'layer5'; stages: relu .*layer4 \\(512 ch, /32\\)"),
        ({**REPLACE, "stages": ["bn1"]}, "replace in bn1: it has no 3×3 convolutions"),
        ({**REPLACE, "block": "non_local"}, "'non_local' cannot replace a convolution; use one of \\['local'\\]"),
        ({**INSERT, "block": "nonlocal"}, "unknown block 'nonlocal'. Did you mean 'non_local'"),
        (
            {**INSERT, "colour": "red"},
            r"block 'non_local' has no option 'colour'; valid options: \['inner_dim', 'mode'",
        ),
    ],
)
def test_grafts_that_do_not_fit_name_block_and_map(graft_entry: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(spec("torchvision/resnet18", graft_entry))


def test_grafts_after_the_head_stage_are_refused() -> None:
    with pytest.raises(SpecError, match=r"layer4 comes after the head's stage layer3"):
        build(spec("torchvision/resnet18", {**HEAD, "stage": "layer3"}, {**INSERT, "after": "layer4"}))
    with pytest.raises(SpecError, match=r"layer4.0.conv1 comes after the head's stage layer3"):
        build(spec("torchvision/resnet18", {**HEAD, "stage": "layer3"}, REPLACE))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"backbone": "torchvision/resnet18", "grafts": []}, "unknown spec key 'grafts' \\(did you mean 'graft'\\?\\)"),
        ({"weights": None}, "needs 'backbone'"),
        ({"backbone": "torchvision/resnet18", "in_chans": 0}, "in_chans must be a positive integer"),
        (
            {"backbone": "torchvision/resnet18", "graft": [{"mode": "prepend"}]},
            "mode one of \\['head', 'insert', 'replace'\\]",
        ),
        ({"backbone": "torchvision/resnet18", "graft": [{"mode": "insert", "block": "se"}]}, "missing \\['after'\\]"),
        ({"backbone": "torchvision/resnet18", "graft": [HEAD, HEAD]}, "at most one head"),
    ],
)
def test_malformed_specs_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(bad)


def test_yaml_spec_builds_the_same_model_as_the_dict(tmp_path: Path) -> None:
    as_dict = spec("torchvision/resnet18", HEAD, INSERT, REPLACE)
    path = tmp_path / "graft.yaml"
    path.write_text(yaml.safe_dump(as_dict))
    torch.manual_seed(0)
    from_dict = build(as_dict)
    torch.manual_seed(0)
    from_yaml = build(path)
    assert str(from_yaml) == str(from_dict)
    left, right = from_dict.state_dict(), from_yaml.state_dict()
    assert left.keys() == right.keys()
    assert all(torch.equal(left[key], right[key]) for key in left)
    assert [p.requires_grad for p in from_dict.parameters()] == [p.requires_grad for p in from_yaml.parameters()]


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("backbone: [unclosed")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML \(.* at line 1, column"):
        build(path)
    path.write_text("backbone: torchvision/resnet18\nfreez: none\n")
    with pytest.raises(SpecError, match=r"broken.yaml: unknown spec key 'freez'"):
        build(path)


def test_summary_counts_every_parameter_once() -> None:
    model = build(spec("torchvision/resnet18", HEAD, INSERT, REPLACE))
    summary = summarize(model)
    params = list(model.parameters())
    assert summary.total == sum(p.numel() for p in params)
    assert summary.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert summary.trainable == sum(row.params for row in summary.grafts)
    assert [row.mode for row in summary.grafts] == ["replace", "head", "insert"]
    assert "head     graph" in str(summary)


def test_top_level_api_grafts_an_existing_torchvision_model() -> None:
    import torchvision

    model = attngraft.graft(torchvision.models.resnet18(weights=None), [HEAD], freeze="backbone", image_size=IMAGE)
    assert model(torch.randn(1, 3, IMAGE, IMAGE)).shape == (1, 1000)  # num_classes from the model's classifier
    assert attngraft.build is build


def test_pickled_insert_hooks_survive_a_fresh_hook_counter() -> None:
    import pickle

    from torch.utils.hooks import RemovableHandle

    model = build(spec("torchvision/resnet18", INSERT)).eval()
    with torch.no_grad():
        model.grafts["insert_layer3"].gate.fill_(1.0)
        expected = model(batch())
    payload = pickle.dumps(model)
    # A new process counts hook ids from 0 again: hand out the pickled id next, as that process might.
    RemovableHandle.next_id = model.hooks["insert_layer3"][1]
    loaded = pickle.loads(payload)
    loaded.backbone.layer3.register_forward_hook(lambda module, args, output: None)
    with torch.no_grad():
        assert torch.equal(loaded(batch()), expected)
    assert isinstance(loaded.ungraft().layer3, nn.Sequential)


def test_ungraft_after_a_dtype_change_gives_a_working_model() -> None:
    model = build(spec("torchvision/resnet18", REPLACE, INSERT)).double()
    original = model.ungraft().eval()
    with torch.no_grad():
        assert original(batch().double()).dtype == torch.float64


def test_graft_with_freeze_none_keeps_the_users_flags_and_mode() -> None:
    original = create_backbone("torchvision/resnet18", num_classes=10, in_chans=1).eval()
    original.conv1.weight.requires_grad_(False)
    model = graft(original, [INSERT], freeze="none")
    assert not model.training
    assert not model.backbone.training
    assert not model.backbone.conv1.weight.requires_grad
    assert model.backbone.layer1[0].conv1.weight.requires_grad


def test_insert_after_a_module_that_runs_several_times_is_refused() -> None:
    with pytest.raises(SpecError, match=r"layer1\.0\.relu runs 2 times per forward"):
        build(spec("torchvision/resnet18", {**INSERT, "block": "se", "after": "layer1.0.relu"}))


def test_insert_after_a_parameter_free_module_past_the_head_is_refused() -> None:
    with pytest.raises(SpecError, match="avgpool comes after the head's stage layer3"):
        build(spec("torchvision/resnet18", {**HEAD, "stage": "layer3"}, {**INSERT, "block": "se", "after": "avgpool"}))


def test_head_on_a_timm_stem_keeps_modules_its_forward_still_indexes() -> None:
    model = build(spec("timm/mobilenetv3_small_100", {**HEAD, "stage": "bn1", "patch_size": 4}))
    assert model(batch()).shape == (2, 10)
    assert any("kept the backbone modules after bn1" in note for note in model.notes)


def test_replace_at_an_odd_map_size_keeps_the_convolution_shapes() -> None:
    model = build(spec("torchvision/resnet18", {**REPLACE, "stages": ["layer3", "layer4"]}, image_size=200))
    assert model(torch.randn(1, 1, 200, 200)).shape == (1, 10)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"graft": [{**HEAD, "patch_size": "2"}]}, "patch_size must be a positive integer, got '2'"),
        ({"graft": [{**HEAD, "depth": 0}]}, "depth must be a positive integer, got 0"),
        ({"graft": [{**HEAD, "mode": ["head"]}]}, "mode one of"),
        ({"download": "no"}, "download must be true or false, got 'no'"),
    ],
)
def test_more_malformed_specs_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build({"backbone": "torchvision/resnet18", "image_size": IMAGE, **bad})


def test_binary_spec_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(SpecError, match="not UTF-8 text"):
        build(path)


def test_feature_extraction_traces_the_inserted_blocks() -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    from attngraft.grafting.backbone import tracer_options

    model = build(spec("torchvision/resnet18", INSERT)).eval()
    with torch.no_grad():
        model.grafts["insert_layer3"].gate.fill_(1.0)
        traced = create_feature_extractor(model, ["backbone.layer4"], tracer_kwargs=tracer_options())(batch())[
            "backbone.layer4"
        ]
        captured: list[torch.Tensor] = []
        handle = model.backbone.layer4.register_forward_hook(lambda module, args, output: captured.append(output))
        model(batch())
        handle.remove()
    torch.testing.assert_close(traced, captured[0])
