from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attngraft.errors import ConfigError, UnknownNameError
from attngraft.recipes import packaged_directory
from attngraft.study.config import load_study, resolve_study, study_directories, substitute
from attngraft.train.module import ImageClassifier

STUDY_FILES = sorted((packaged_directory() / "studies").glob("*.yaml"))


def resolve(content: dict, profile: str = "quick", **overrides):
    return resolve_study(content, name="t", profile=profile, source=Path("t.yaml"), overrides=overrides or None)


def minimal(**changes) -> dict:
    content = {
        "profiles": {"quick": {"seeds": [0], "epochs": {"short": 1}, "vars": {"stage": "layer2", "depth": 2}}},
        "cells": [
            {"name": "a", "network": "resnet18", "epochs": "short"},
            {"name": "b", "pretrained": "a", "network": {"stage": "${stage}", "depth": "${depth}"}, "epochs": 3},
        ],
    }
    content.update(changes)
    return content


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda path: path.stem)
def test_every_committed_study_builds_every_cell(path: Path):
    profiles = yaml.safe_load(path.read_text())["profiles"]
    for profile in profiles:
        study = load_study(str(path), profile)
        for dataset in [entry.name for entry in study.datasets]:
            for cell in study.cells(dataset):
                model = ImageClassifier(cell.network, num_classes=10, in_chans=1, **cell.training)
                assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0, (profile, cell.name)


def test_committed_studies_are_found_by_name():
    assert (packaged_directory() / "studies").resolve() in [directory.resolve() for directory in study_directories()]
    assert load_study("graft").source.name == "graft.yaml"


def test_variables_keep_their_type_whole_and_format_inside_strings():
    variables = {"stage": "layer2", "sizes": [1, 2], "n": 3}
    value = {"a": "${sizes}", "b": ["${n}", "x_${stage}_${n}"], "c": 5}
    assert substitute(value, variables, "here") == {"a": [1, 2], "b": [3, "x_layer2_3"], "c": 5}


def test_profile_resolves_epochs_seeds_and_variables():
    study = resolve(minimal())
    first, second = study.cells("fashion-mnist")
    assert (first.epochs, second.epochs) == (1, 3)
    assert second.network == {"stage": "layer2", "depth": 2}
    assert second.pretrained == "a"
    assert first.data["dataset"] == "fashion-mnist"


def test_set_overrides_a_profile_variable():
    study = resolve(minimal(), stage="layer3")
    assert study.cells("fashion-mnist")[1].network["stage"] == "layer3"


def test_set_overrides_dataset_variables_too_and_rejects_unknown_names():
    content = minimal(datasets=[{"name": "fashion-mnist", "vars": {"stage": "layer4"}}])
    assert resolve(content).cells("fashion-mnist")[1].network["stage"] == "layer4"
    assert resolve(content, stage="layer1").cells("fashion-mnist")[1].network["stage"] == "layer1"
    with pytest.raises(ConfigError, match=r"--set stag: no such variable; the variables are \['depth', 'stage'\]"):
        resolve(content, stag="layer1")


def test_study_wide_settings_take_variables_too():
    content = minimal(data={"image_size": "${size}", "batch_size": 8})
    content["profiles"]["quick"]["vars"]["size"] = 56
    assert resolve(content).cells("fashion-mnist")[0].data == {
        "image_size": 56,
        "batch_size": 8,
        "dataset": "fashion-mnist",
    }


def test_cell_settings_override_study_and_profile_settings():
    content = minimal(training={"lr": 0.1, "weight_decay": 0.0})
    content["profiles"]["quick"]["training"] = {"lr": 0.2}
    content["cells"][1]["training"] = {"lr": 0.3}
    first, second = resolve(content).cells("fashion-mnist")
    assert first.training == {"lr": 0.2, "weight_decay": 0.0}
    assert second.training == {"lr": 0.3, "weight_decay": 0.0}


def test_runs_go_dataset_seed_cell_and_a_selected_cell_brings_its_source():
    content = minimal()
    content["profiles"]["quick"]["seeds"] = [0, 1]
    study = resolve(content)
    assert [run.key for run in study.runs()] == [
        "fashion-mnist/a/seed0",
        "fashion-mnist/b/seed0",
        "fashion-mnist/a/seed1",
        "fashion-mnist/b/seed1",
    ]
    assert [run.cell.name for run in study.runs(cells=["b"])] == ["a", "b", "a", "b"]
    with pytest.raises(UnknownNameError, match=r"cell 'c'.*Valid cells: a, b"):
        study.runs(cells=["c"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cellz": []}, r"unknown key 'cellz'; valid keys: description"),
        ({"cells": []}, r"cells: expected a non-empty list"),
        ({"cells": [{"name": "a", "network": "x", "epochs": "long"}]}, r"cell a\.epochs: 'long' is not in"),
        ({"cells": [{"name": "a", "network": "x", "epochs": 0}]}, r"cell a\.epochs: expected a positive integer"),
        ({"cells": [{"name": "a", "epochs": 1}]}, r"cell a: needs 'network'"),
        ({"cells": [{"name": "a b", "network": "x", "epochs": 1}]}, r"cells\[0\]\.name"),
        ({"cells": [{"name": "a", "network": "${nope}", "epochs": 1}]}, r"cell a: unknown variable \$\{nope\}"),
        ({"cells": [{"name": "a", "network": "x", "epochs": 1, "pretrained": "z"}]}, r"'z' is not a cell before"),
        ({"cells": [{"name": "a", "network": "x", "epochs": 1}] * 2}, r"cell a: the name is used twice"),
        ({"measure": {"batch_sizes": [0]}}, r"measure\.batch_sizes"),
        ({"explain": {"images": -1}}, r"explain\.images: expected a count >= 0"),
        ({"explain": {"method": "shap"}}, r"explain\.method: unknown 'shap'; valid: gradcam, ig, occlusion"),
        ({"explain": {"image": 2}}, r"explain: unknown key 'image'"),
        ({"datasets": []}, r"datasets: expected a non-empty list"),
        ({"profiles": {"quick": {"seeds": [0, 0]}}}, r"seeds: expected a non-empty list of distinct integers"),
        ({"profiles": {"quick": {"seeds": [True]}}}, r"seeds: expected a non-empty list of distinct integers"),
    ],
)
def test_bad_study_files_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        resolve(minimal(**change))


def test_unknown_profile_lists_the_profiles():
    with pytest.raises(UnknownNameError, match=r"unknown profile .fast..*Valid profiles: quick"):
        resolve(minimal(), profile="fast")


def test_unknown_study_name_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'graft'"):
        load_study("graf")


def test_unreadable_study_file_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("cells: [\n")
    with pytest.raises(ConfigError, match=r"study file .*bad\.yaml: not valid YAML"):
        load_study(str(path))


def test_optional_datasets_carry_their_variables():
    content = minimal(datasets=["fashion-mnist", {"name": "cifar10", "optional": True, "vars": {"stage": "layer4"}}])
    study = resolve(content)
    assert [(entry.name, entry.optional) for entry in study.datasets] == [("fashion-mnist", False), ("cifar10", True)]
    assert study.cells("cifar10")[1].network["stage"] == "layer4"
    assert study.cells("cifar10")[1].data["dataset"] == "cifar10"
