"""Shared fixtures: an isolated user cache for every test, and the real Fashion-MNIST when installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty user cache and no $ATTNGRAFT_DATA, so tests never see each other's files."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("ATTNGRAFT_DATA", raising=False)
    return cache / "attngraft"


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The Debian package's Fashion-MNIST. Skipped when absent locally; in CI (`make setup` installs it) a failure."""
    if not FASHION_MNIST_DIR.is_dir():
        message = f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install -y dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return FASHION_MNIST_DIR
