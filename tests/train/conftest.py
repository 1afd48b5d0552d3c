"""Tiny recipes on real Fashion-MNIST subsets for the training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def recipe(fashion_mnist_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A recipe for 256 training and 128 validation images; ``sections`` update its model/data/trainer keys."""
    config: dict[str, Any] = {
        "seed_everything": 0,
        "model": {"network": "mnist_cnn", "lr": 1e-3},
        "data": {
            "dataset": "fashion-mnist",
            "data_dir": str(fashion_mnist_dir),
            "batch_size": 32,
            "train_size": 256,
            "val_size": 128,
            "num_workers": 0,
        },
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 2,
        },
    }
    for key, values in sections.items():
        config.setdefault(key, {})
        if isinstance(values, dict):
            config[key].update(values)
        else:
            config[key] = values
    return config


@pytest.fixture
def write_recipe(tmp_path: Path, fashion_mnist_dir: Path):
    """Writes ``recipe(**sections)`` to ``tmp_path/name.yaml`` and returns its path."""

    def write(name: str = "tiny", **sections: dict[str, Any]) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe(fashion_mnist_dir, **sections)))
        return path

    return write
