from __future__ import annotations

import json

import pytest

from attngraft.cli import main
from attngraft.study.cost import DESIGNS, measured_cost


@pytest.mark.parametrize("design", DESIGNS.names())
@pytest.mark.parametrize("side", [8, 12])
def test_formulas_match_the_blocks_entries_exactly_and_flops_within_5_percent(design: str, side: int) -> None:
    analytic = DESIGNS.get(design).cost(side, 32, 4)
    measured = measured_cost(design, side, 32, 4)
    assert measured.entries == analytic.entries
    assert measured.flops == pytest.approx(analytic.flops, rel=0.05)


def test_the_pixel_transformer_needs_768_gib_of_attention_matrices_at_128_pixels() -> None:
    """The issue's figure: an R = 128 image, 48 layers, 16 heads: (R²)² entries per head and layer."""
    per_layer = DESIGNS.get("pixel").cost(128, 64, 16)
    assert per_layer.entries == 16 * 128**4
    assert 48 * per_layer.attention_bytes / 2**30 == pytest.approx(768)


@pytest.mark.parametrize(("design", "exponent"), [("pixel", 4), ("non_local", 4), ("local", 2), ("window", 2)])
def test_entries_grow_as_the_side_to_the_designs_power(design: str, exponent: int) -> None:
    cost = DESIGNS.get(design).cost
    assert cost(224, 64, 8).entries / cost(112, 64, 8).entries == pytest.approx(2**exponent)


def test_cost_command_writes_the_table_and_never_runs_sizes_over_the_measuring_limit(tmp_path, capsys) -> None:
    out = tmp_path / "cost"
    arguments = ["cost", "--sizes", "8,16", "--blocks", "pixel,local", "--dim", "16", "--heads", "2"]
    assert main([*arguments, "--measure-mib", "0.05", "--budget-gb", "0.0001", "--out", str(out)]) == 0
    rows = {(row["design"], row["side"]): row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["pixel", 8]["measured"]  # 2 heads × 64² entries = 32 KiB
    assert rows["pixel", 8]["measured_entries"] == 2 * 64**2
    assert not rows["pixel", 16]["measured"]  # 512 KiB of matrices: over 0.05 MiB, analytic only
    assert "ms_forward_backward" not in rows["pixel", 16]
    assert not rows["local", 16]["measured"]  # 2 × 256 × 49 entries = 98 KiB
    assert not rows["pixel", 16]["fits_budget"]  # the budget: 0.0001 GiB = 102.4 KiB
    assert rows["local", 16]["fits_budget"]
    report = (out / "results.md").read_text()
    assert "| pixel | 16 | 131,072 | 0.5 | " in report
    assert "768 GiB in fp32 per image" in report
    assert "largest deviation: 0.00%" in report  # measured entries equal the formula
    assert (out / "cost.png").read_bytes().startswith(b"\x89PNG")
    assert "over the 0.0 GiB budget: pixel from R=16" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--blocks", "pixl"], "Did you mean 'pixel'?"),
        (["--sizes", "8,x"], "--sizes '8,x': expected comma-separated positive integers"),
        (["--dim", "10", "--heads", "3"], "--heads must divide --dim"),
    ],
)
def test_cost_user_errors_exit_2(arguments, message, tmp_path, capsys) -> None:
    assert main(["cost", *arguments, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
