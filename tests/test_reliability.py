"""Every bad-input case of scripts/reliability.py (the table in docs/reliability.md) gets one clear line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "reliability.py"
spec = importlib.util.spec_from_file_location("reliability", SCRIPT)
assert spec is not None
assert spec.loader is not None
reliability = importlib.util.module_from_spec(spec)
sys.modules["reliability"] = reliability  # dataclasses look their module up there
spec.loader.exec_module(reliability)


@pytest.mark.parametrize("case", reliability.CASES, ids=lambda case: " ".join(case.argv)[:60])
def test_a_bad_input_gets_one_clear_line(case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reliability._files(tmp_path)
    outcome = reliability.run_case(case, tmp_path)
    assert outcome.passed, f"{outcome.why}: {outcome.message}"
    assert not (tmp_path / "pwned").exists()


def test_the_published_table_is_the_scripts(tmp_path: Path) -> None:
    """docs/reliability.md lists every case (regenerate it with the script's --markdown after adding one)."""
    published = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    for case in reliability.CASES:
        command = " ".join(["attngraft", *case.argv]).replace("|", "\\|")
        assert f"`{command}`" in published, command
