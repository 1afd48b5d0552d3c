from __future__ import annotations

import pytest

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
