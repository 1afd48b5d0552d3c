"""The README's Python recipe (torchvision model → graft → ImageClassifier → Trainer.fit → explain) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- recipe: tested by tests/test_readme_recipe.py -->"


def recipe() -> str:
    """The Python block that follows the marker."""
    text = README.read_text()
    found = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.DOTALL)
    assert found is not None, f"README.md has no ```python block after {MARKER!r}"
    return found.group(1)


def test_the_recipe_is_short() -> None:
    lines = [line for line in recipe().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 16, lines


def test_the_readme_recipe_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fashion_mnist_dir: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNGRAFT_DATA", str(fashion_mnist_dir))
    namespace: dict[str, object] = {}
    exec(compile(recipe(), "README.md recipe", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.global_step > 0  # type: ignore[attr-defined]
    assert 0.0 <= float(trainer.callback_metrics["val_acc"]) <= 1.0  # type: ignore[attr-defined]
    network = namespace["network"]
    assert all(not parameter.requires_grad for parameter in network.backbone.parameters())  # type: ignore[attr-defined]
    figures = sorted((tmp_path / "runs" / "explained").glob("*.png"))
    assert len(figures) == 4, figures
    assert (tmp_path / "runs" / "explained" / "explanations.json").is_file()
