"""Every packaged recipe (attngraft/configs/) parses, builds and runs one training and validation batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attngraft.cli import main
from attngraft.recipes import packaged_directory

RECIPES = sorted(packaged_directory().glob("*.yaml"))


def test_the_issue_recipes_exist() -> None:
    names = {path.stem for path in RECIPES}
    assert {
        "resnet18_fashion_mnist",
        "graft_graph_head",
        "graft_mhsa_head",
        "vit_fashion_mnist",
        "sasa_resnet26_fashion_mnist",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_runs_one_step(
    recipe: Path, tmp_path: Path, fashion_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(recipe.read_text())
    assert config["data"]["dataset"] == "fashion-mnist"
    quick = [
        "--data.data_dir", str(fashion_mnist_dir), "--data.train_size", "64", "--data.val_size", "64",
        "--data.batch_size", "16", "--data.num_workers", "0", "--trainer.fast_dev_run", "1",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    assert main(["fit", "--config", str(recipe), *quick]) == 0
