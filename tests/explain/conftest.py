"""A grafted network trained for one short epoch on real Fashion-MNIST by `attngraft fit`, shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attngraft.cli import main
from tests.train.conftest import recipe

# ResNet-18 with a non-local block after layer1 (a map block) and a graph-attention head on layer2's 4×4 map.
GRAFTED = {
    "backbone": "attngraft/resnet18",
    "in_chans": 1,
    "num_classes": 10,
    "image_size": 28,
    "graft": [
        {"mode": "insert", "block": "non_local", "after": "layer1"},
        {"mode": "head", "block": "graph", "stage": "layer2", "patch_size": 1, "depth": 2, "embed_dim": 32},
    ],
    "freeze": "none",
}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    """The run directory (``version_0``) of a 1-epoch fit of :data:`GRAFTED` on 256 images."""
    root = tmp_path_factory.mktemp("explain-run")
    config = recipe(fashion_mnist_dir, model={"network": GRAFTED, "lr": 3e-3}, trainer={"max_epochs": 1})
    path = root / "grafted.yaml"
    path.write_text(yaml.safe_dump(config))
    arguments = ["fit", "--config", str(path), "--trainer.default_root_dir", str(root / "runs")]
    assert main(arguments) == 0
    return root / "runs" / "grafted" / "version_0"
