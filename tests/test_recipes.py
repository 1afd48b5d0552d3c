"""The packaged recipes, graft specs and studies: found by name or by their ``configs/...`` path from anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from attngraft.errors import ConfigError
from attngraft.grafting import load_spec
from attngraft.recipes import find_recipe, list_recipes, packaged_directory, packaged_recipe, recipe_arguments
from attngraft.study.config import find_study, list_studies


def test_the_package_ships_recipes_specs_and_studies() -> None:
    assert "resnet18_fashion_mnist" in list_recipes()
    assert "grafts/resnet18_non_local_insert" in list_recipes("grafts")
    assert {"studies/graft", "studies/vit", "studies/sasa"} <= set(list_recipes("studies"))


@pytest.mark.parametrize(
    "name",
    ["resnet18_fashion_mnist", "resnet18_fashion_mnist.yaml", "configs/resnet18_fashion_mnist.yaml"],
)
def test_a_missing_relative_path_names_the_packaged_recipe(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_recipe(name) == packaged_directory() / "resnet18_fashion_mnist.yaml"


def test_a_local_file_wins_over_the_packaged_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "configs" / "resnet18_fashion_mnist.yaml"
    local.parent.mkdir()
    local.write_text("model: {network: resnet18}\n")
    assert find_recipe("configs/resnet18_fashion_mnist.yaml") == Path("configs/resnet18_fashion_mnist.yaml")


@pytest.mark.parametrize("name", ["no_such_recipe", "../configs/resnet18_fashion_mnist.yaml", "/nowhere/x.yaml"])
def test_nothing_outside_the_package_directory_or_absent_is_packaged(name: str) -> None:
    assert packaged_recipe(name) is None
    assert find_recipe(name) == Path(name)


def test_config_arguments_resolve_in_both_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    packaged = packaged_directory() / "vit_fashion_mnist.yaml"
    resolved = recipe_arguments(
        ["--config", "vit_fashion_mnist", "--trainer.max_epochs", "1", "-c=configs/vit_fashion_mnist"]
    )
    assert resolved == ["--config", str(packaged), "--trainer.max_epochs", "1", f"-c={packaged}"]
    assert recipe_arguments(["--config", "{trainer: {max_epochs: 1}}"]) == ["--config", "{trainer: {max_epochs: 1}}"]


def test_a_config_that_is_nowhere_lists_the_packaged_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--config resnet18_fashoin: no such file.*resnet18_fashion_mnist"):
        recipe_arguments(["--config", "resnet18_fashoin"])


def test_graft_specs_and_studies_resolve_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_spec("configs/grafts/resnet18_non_local_insert.yaml")["graft"][0]["block"] == "non_local"
    assert load_spec("grafts/resnet18_non_local_insert")["backbone"] == "torchvision/resnet18"
    assert {"graft", "vit", "sasa"} <= set(list_studies())
    assert find_study("graft") == packaged_directory() / "studies" / "graft.yaml"
    assert find_study("configs/studies/sasa.yaml") == packaged_directory() / "studies" / "sasa.yaml"


def test_a_local_studies_directory_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "studies").mkdir(parents=True)
    (tmp_path / "configs" / "studies" / "mine.yaml").write_text("cells: []\n")
    (tmp_path / "configs" / "studies" / "graft.yaml").write_text("cells: []\n")
    assert {"mine", "graft", "vit"} <= set(list_studies())
    assert find_study("graft") == Path("configs/studies/graft.yaml")
