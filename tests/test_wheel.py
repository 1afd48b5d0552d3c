"""The built wheel works outside the checkout: packaged studies, recipes and specs are found from any directory.

The wheel is built offline from a copy of the sources (``pip wheel --no-build-isolation --no-index``), installed
with ``pip install --target`` into a temporary directory, and run from another temporary directory with only that
directory on ``PYTHONPATH``: listing the studies, planning the packaged graft study, building a packaged graft spec
by its ``configs/...`` path, and running a one-cell study of one's own (``./configs/studies/tiny.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from pathlib import Path
import attngraft
from attngraft.cli import main
site = Path(sys.argv[1]).resolve()
assert Path(attngraft.__file__).resolve().is_relative_to(site), attngraft.__file__
print("imported from", attngraft.__file__, flush=True)
for command in (
    ["study", "--list"],
    ["study", "graft", "--plan"],
    ["graft-info", "configs/grafts/resnet18_non_local_insert.yaml"],
    ["study", "tiny", "--out", "results", "--no-progress"],
):
    print("$ attngraft", *command, flush=True)
    code = main(command)
    print("exit", code, flush=True)
    if code:
        sys.exit(code)
"""


def tiny_study(fashion_mnist_dir: Path) -> dict[str, object]:
    """One small CNN trained for one epoch on 64 images; tested on one batch; no attribution figure."""
    return {
        "description": "One cell, from the installed wheel.",
        "data": {"data_dir": str(fashion_mnist_dir), "batch_size": 32, "train_size": 64, "val_size": 32,
                 "num_workers": 0},
        "trainer": {"accelerator": "cpu", "limit_test_batches": 1},
        "measure": {"batch_sizes": [1], "repeats": 1},
        "explain": {"images": 0},
        "profiles": {"quick": {"seeds": [0], "epochs": {"scratch": 1}}},
        "cells": [{"name": "cnn", "label": "MNIST CNN", "network": "mnist_cnn", "epochs": "scratch"}],
    }  # fmt: skip


def build_wheel(tmp_path: Path) -> Path:
    """Builds the wheel from a copy of the sources (so the checkout gets no build/ or egg-info), offline."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--quiet", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("attngraft-*.whl")
    return wheel


def test_the_installed_wheel_finds_its_studies_recipes_and_specs_from_anywhere(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {path.relative_to(REPO / "src").as_posix() for path in (REPO / "src/attngraft/configs").rglob("*.yaml")}
    assert packaged <= names, sorted(packaged - names)
    assert {"attngraft/configs/studies/graft.yaml", "attngraft/configs/resnet18_fashion_mnist.yaml"} <= names
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, timeout=300)

    work = tmp_path / "work"
    (work / "configs" / "studies").mkdir(parents=True)
    (work / "configs" / "studies" / "tiny.yaml").write_text(yaml.safe_dump(tiny_study(fashion_mnist_dir)))
    environment = {**os.environ, "PYTHONPATH": str(site), "CI": ""}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(site)],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    listing = out.split("$ attngraft study --list\n")[1].split("exit 0")[0].split()
    assert {"graft", "sasa", "tiny", "vit"} <= set(listing)
    assert "fashion-mnist/resnet18/seed0" in out  # the packaged graft study's plan
    assert "insert   non_local   after layer3" in out  # the packaged spec, built
    rows = json.loads((work / "results" / "results.json").read_text())["rows"]
    assert [row["study_cell"] for row in rows] == ["cnn"]
    assert 0 <= rows[0]["test_acc"] <= 1
