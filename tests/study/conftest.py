"""A tiny study on real Fashion-MNIST subsets: a ResNet-18 baseline and grafts on its frozen trained copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

HEAD = {"mode": "head", "block": "graph", "stage": "layer2", "patch_size": 1, "depth": 1, "embed_dim": 32}


def tiny_study(fashion_mnist_dir: Path) -> dict[str, Any]:
    """Two seeds; a baseline from scratch and a graph head on its frozen copy; 64 training images."""
    return {
        "description": "A tiny study for the tests.",
        "data": {
            "dataset": "fashion-mnist",
            "data_dir": str(fashion_mnist_dir),
            "batch_size": 32,
            "train_size": 64,
            "val_size": 32,
            "num_workers": 0,
        },
        "training": {"lr": 0.001},
        "trainer": {"accelerator": "cpu", "limit_test_batches": 1, "log_every_n_steps": 1},
        "measure": {"batch_sizes": [1, 4], "repeats": 1, "test_every_epoch": True},
        "profiles": {"quick": {"seeds": [0, 1], "epochs": {"scratch": 1, "head": 2}, "vars": {"stage": "layer2"}}},
        "cells": [
            {"name": "base", "label": "Base", "network": "resnet18", "epochs": "scratch"},
            {
                "name": "head",
                "label": "Base + graph head",
                "attention": "graph head",
                "pretrained": "base",
                "network": {
                    "backbone": "attngraft/resnet18",
                    "image_size": 28,
                    "graft": [{**HEAD, "stage": "${stage}"}],
                    "freeze": "backbone",
                },
                "epochs": "head",
            },
        ],
    }


@pytest.fixture
def study_file(tmp_path: Path, fashion_mnist_dir: Path):
    """Writes the tiny study (updated by ``changes``) to ``tmp_path/tiny.yaml`` and returns its path."""

    def write(**changes: Any) -> Path:
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump({**tiny_study(fashion_mnist_dir), **changes}, sort_keys=False))
        return path

    return write
