"""Grafts as values (Head, Insert, Replace), the graft() call forms, model.spec, num_classes, options, head stage."""

import copy
import pickle

import pytest
import torch
import torchvision
import yaml
from torch import nn

import attngraft
from attngraft.blocks import create_block
from attngraft.errors import SpecError, UnknownOptionError
from attngraft.grafting import Head, Insert, Replace, SingleTokenWarning, as_graft, build, graft
from attngraft.grafting.backbone import create_backbone

IMAGE = 64
HEAD = {"mode": "head", "block": "graph", "stage": "layer4", "num_heads": 4}
INSERT = {"mode": "insert", "block": "non_local", "after": "layer3"}
REPLACE = {"mode": "replace", "block": "local", "stages": ["layer4"], "kernel_size": 3, "num_heads": 8}


def spec(*grafts: object, **extra: object) -> dict[str, object]:
    base = {"backbone": "torchvision/resnet18", "in_chans": 1, "num_classes": 10, "image_size": IMAGE}
    return {**base, "graft": list(grafts), **extra}


def batch(size: int = 2, channels: int = 1) -> torch.Tensor:
    return torch.randn(size, channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def assert_same_model(left: nn.Module, right: nn.Module) -> None:
    assert str(left) == str(right)
    left_state, right_state = left.state_dict(), right.state_dict()
    assert left_state.keys() == right_state.keys()
    assert all(torch.equal(left_state[key], right_state[key]) for key in left_state)
    assert [p.requires_grad for p in left.parameters()] == [p.requires_grad for p in right.parameters()]


VALUES = [
    Head("graph", stage="layer4", num_heads=4, mlp_ratio=2.0),
    Head("mhsa"),
    Insert("non_local", after="layer3", inner_dim=32),
    Insert("cbam", after=["layer1", "layer2.1"]),
    Insert("non_local", after="layer3", mode="dot_product"),  # a block option named like the entry's 'mode' key
    Replace(stages=["layer4"], kernel_size=3, num_heads=8),
    Replace("local", stages="layer3"),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_round_trip_through_their_yaml_dict_form(value: Head | Insert | Replace) -> None:
    entry = value.to_dict()
    assert entry["mode"] == value.mode
    assert as_graft(yaml.safe_load(yaml.safe_dump(entry))) == value
    assert as_graft(entry) == value
    assert hash(as_graft(entry)) == hash(value)
    assert pickle.loads(pickle.dumps(value)) == value
    assert copy.deepcopy(value) == value


def test_a_block_option_that_clashes_with_an_entry_key_goes_under_options() -> None:
    entry = Insert("non_local", after="layer3", mode="dot_product").to_dict()
    assert entry == {"mode": "insert", "block": "non_local", "after": "layer3", "options": {"mode": "dot_product"}}
    model = graft(create_backbone("torchvision/resnet18", in_chans=1), entry, image_size=IMAGE)
    assert model.grafts["insert_layer3"].block.mode == "dot_product"


def test_values_differ_when_their_options_do() -> None:
    assert Insert("se", after="layer3", reduction=8) != Insert("se", after="layer3", reduction=4)
    assert Head("graph", "layer4") == Head("graph", stage="layer4")
    assert Insert("se", after=["layer3"]) != Insert("se", after="layer3")  # a list stays a list in the dict form


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Head("graph", patch_size=0), "patch_size must be a positive integer, got 0"),
        (lambda: Head("graph", stage=""), "stage must be a module or block name"),
        (lambda: Insert("se", after=[]), "after must be a module name or a non-empty list"),
        (lambda: Replace(stages=[3]), "stages must be a module or block name"),
        (lambda: as_graft({"mode": "insert", "block": "se", "after": "layer3", "options": 3}), "options must be a"),
        (
            lambda: as_graft(
                {"mode": "insert", "block": "se", "after": "x", "reduction": 4, "options": {"reduction": 2}}
            ),
            r"\['reduction'\] given both as keys and under options",
        ),
    ],
)
def test_malformed_values_are_refused(make: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make()  # type: ignore[operator]


def test_dicts_and_values_build_identical_models() -> None:
    torch.manual_seed(0)
    from_dicts = build(spec(HEAD, INSERT, REPLACE))
    torch.manual_seed(0)
    from_values = build(
        spec(
            Head("graph", stage="layer4", num_heads=4),
            Insert("non_local", after="layer3"),
            Replace("local", stages=["layer4"], kernel_size=3, num_heads=8),
        )
    )
    assert_same_model(from_dicts, from_values)


def test_build_keeps_the_spec_that_rebuilds_the_model() -> None:
    torch.manual_seed(0)
    model = build(spec(Head("graph", num_heads=4), INSERT))
    assert model.spec is not None
    assert model.spec["graft"][0] == {**Head("graph", stage="layer4", num_heads=4).to_dict()}  # the chosen stage
    assert model.spec["in_chans"] == 1
    assert model.spec["image_size"] == IMAGE
    assert yaml.safe_load(yaml.safe_dump(model.spec)) == model.spec  # plain YAML
    torch.manual_seed(0)
    assert_same_model(build(model.spec), model)
    # The spec is a plain attribute: the state dict, deepcopy and pickling are as before.
    assert not any("spec" in key for key in model.state_dict())
    assert copy.deepcopy(model).spec == model.spec
    assert pickle.loads(pickle.dumps(model)).spec == model.spec


def test_graft_on_a_users_module_has_no_spec_but_keeps_its_entries() -> None:
    model = graft(create_backbone("torchvision/resnet18", in_chans=1), Insert("se", after="layer2"), image_size=IMAGE)
    assert model.spec is None
    assert model.graft_entries == [{"mode": "insert", "block": "se", "after": "layer2"}]


def test_the_older_call_forms_still_work() -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return create_backbone("torchvision/resnet18", in_chans=1, num_classes=10)

    def grafted(*arguments: object, **keywords: object) -> nn.Module:
        model = make()
        torch.manual_seed(1)
        return graft(model, *arguments, image_size=IMAGE, **keywords)  # type: ignore[arg-type]

    reference = grafted(Insert("se", after="layer2"), Insert("cbam", after="layer3"))
    assert_same_model(grafted([{**INSERT, "block": "se", "after": "layer2"}, {**INSERT, "block": "cbam"}]), reference)
    assert_same_model(
        grafted(graft=[{**INSERT, "block": "se", "after": "layer2"}, {**INSERT, "block": "cbam"}]), reference
    )
    assert_same_model(grafted({**INSERT, "block": "se", "after": "layer2"}, Insert("cbam", after="layer3")), reference)
    with pytest.raises(TypeError, match="not also graft="):
        grafted(Insert("se", after="layer2"), graft=[INSERT])


def test_readme_example_with_a_graft_list_and_num_classes() -> None:
    model = attngraft.graft(
        torchvision.models.resnet18(weights=None), [HEAD], freeze="backbone", num_classes=10, image_size=IMAGE
    )
    assert model(torch.randn(1, 3, IMAGE, IMAGE)).shape == (1, 10)


@pytest.mark.parametrize("grafts", [[Insert("non_local", after="layer3")], [Replace(stages=["layer4"], kernel_size=3)]])
def test_num_classes_gives_a_fresh_trained_classifier_in_insert_and_replace_modes(grafts: list[object]) -> None:
    original = torchvision.models.resnet18(weights=None)
    old_classifier = original.fc
    model = graft(original, *grafts, num_classes=10, image_size=IMAGE)
    assert model.backbone.fc is not old_classifier
    assert model.backbone.fc.out_features == 10
    assert "fc" in model.new_modules
    assert any("classifier fc" in note and "10" in note for note in model.notes)
    images = torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    assert model.eval()(images).shape == (4, 10)
    model.train()
    new = tuple(f"{name}." for name in model.new_modules)  # the classifier, replaced convolutions
    frozen = {key: value.clone() for key, value in model.backbone.state_dict().items() if not key.startswith(new)}
    fc_before = model.backbone.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(images)
        assert logits.shape == (4, 10)
        nn.functional.cross_entropy(logits, torch.arange(4)).backward()
        optimizer.step()
    assert not torch.equal(model.backbone.fc.weight, fc_before)  # the new classifier trains
    state = model.backbone.state_dict()
    assert [key for key, value in frozen.items() if not torch.equal(state[key], value)] == []
    assert model.ungraft().fc is old_classifier


def test_num_classes_equal_to_the_classifiers_keeps_it() -> None:
    original = create_backbone("torchvision/resnet18", in_chans=1, num_classes=10)
    classifier = original.fc
    model = graft(original, Insert("se", after="layer3"), num_classes=10, image_size=IMAGE)
    assert model.backbone.fc is classifier
    assert model.new_modules == []


def test_num_classes_without_a_classifier_is_refused() -> None:
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    with pytest.raises(SpecError, match="num_classes=10: Sequential has no classifier"):
        graft(features, num_classes=10, image_size=16)


def test_a_head_without_stage_takes_the_last_map_of_at_least_2x2() -> None:
    model = build(spec(Head("graph", num_heads=4)))  # 64 px: layer4 is 2×2
    assert model.head_stage == "layer4"
    model = build(spec(Head("graph", num_heads=4), image_size=32))  # 32 px: layer4 is 1×1, layer3 2×2
    assert model.head_stage == "layer3"
    assert any(note.startswith("head stage: layer3 (256 ch, /16)") and "at least 2×2" in note for note in model.notes)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_a_head_over_a_1x1_map_warns() -> None:
    with pytest.warns(SingleTokenWarning, match=r"head graph on layer4 \(512 ch, 1×1\).*single token"):
        model = build(spec(Head("graph", stage="layer4", num_heads=4), image_size=32))
    assert any("single token" in note for note in model.notes)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            Insert("se", after="layer3", ratio=4),
            r"insert se after layer3 .*block 'se' has no option 'ratio'; valid options: \['reduction'\]",
        ),
        (
            Replace(stages=["layer4"], kernal_size=3),
            r"replace in layer4: block 'local' has no option 'kernal_size' \(did you mean 'kernel_size'\?\); valid "
            r"options: \['backend', 'compiled', 'kernel_size', 'num_heads', 'qkv_bias'\]",
        ),
        (
            Head("graph", stage="layer4", radious=1.5),
            r"head graph on layer4 .*has no option 'radious' \(did you mean 'radius'\?\); valid options: "
            r"\[.*'drop_path_rate', .*'mlp_ratio', .*'radius'.*\]",
        ),
        (
            Replace(stages=["layer4"], stride=2),
            r"has no option 'stride'.*out_dim and stride come from each convolution",
        ),
    ],
)
def test_unknown_block_options_list_the_valid_ones(entry: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(spec(entry))


def test_create_block_refuses_unknown_options_with_the_valid_ones() -> None:
    with pytest.raises(UnknownOptionError, match=r"block 'mhsa' has no option 'heads'.*valid options: \['attn_drop'"):
        create_block("mhsa", 32, heads=4)
    assert issubclass(UnknownOptionError, TypeError)
