from __future__ import annotations

import json

import pytest
import torch

from attngraft.blocks import BLOCKS, create_block
from attngraft.cli import main
from attngraft.study.cost import DESIGNS, CostConfig, design_name, measured_cost, peak_bytes, saved_bytes

CONFIGS = [CostConfig(dim=32, heads=4), CostConfig(dim=16, heads=2, patch=2, kernel=3, window=4)]


@pytest.mark.parametrize("design", DESIGNS.names())
@pytest.mark.parametrize("side", [12, 14])  # 12 pads the 7×7 windows; both above the local blocks' dense path
@pytest.mark.parametrize("config", CONFIGS, ids=["k7w7p4", "k3w4p2"])
def test_formulas_match_the_blocks(design: str, side: int, config: CostConfig) -> None:
    """Entries exactly, FLOPs within 5% (``flop_counter``), kept activations exactly (autograd's saved tensors)."""
    analytic = DESIGNS.get(design).cost(side, config)
    measured = measured_cost(design, side, config)
    assert measured.entries == analytic.entries
    assert measured.flops == pytest.approx(analytic.flops, rel=0.05)
    assert measured.activations == analytic.activations


def test_the_pixel_transformer_needs_768_gib_of_attention_matrices_at_128_pixels() -> None:
    """The issue's figure: an R = 128 image, 48 layers, 16 heads: (R²)² entries per head and layer."""
    per_layer = DESIGNS.get("mhsa").cost(128, CostConfig(heads=16))
    assert per_layer.entries == 16 * 128**4
    assert 48 * per_layer.attention_bytes / 2**30 == pytest.approx(768)


@pytest.mark.parametrize(
    ("design", "exponent"),
    [("mhsa", 4), ("graph", 4), ("non_local", 4), ("vit", 4), ("local", 2), ("local_relation", 2), ("window", 2)],
)
def test_entries_grow_as_the_side_to_the_designs_power(design: str, exponent: int) -> None:
    cost = DESIGNS.get(design).cost
    assert cost(448, CostConfig()).entries / cost(224, CostConfig()).entries == pytest.approx(2**exponent, rel=0.01)


def test_pixel_vit_is_the_pixel_transformer_and_unknown_designs_list_the_valid_ones() -> None:
    assert design_name("pixel_vit") == "mhsa"
    with pytest.raises(Exception, match="Did you mean 'local'"):
        design_name("locl")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dim": 10, "heads": 3}, "heads=3 must divide dim=10"),
        ({"dim": 12, "heads": 4}, "even head dim"),
        ({"kernel": 4}, "kernel=4 must be odd"),
        ({"window": 0}, "window=0 must be positive"),
    ],
)
def test_config_rejects_what_no_block_accepts(settings: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CostConfig(**settings)


def test_the_peak_holds_the_kept_activations_and_the_backward_on_top() -> None:
    block = create_block("graph", 16, num_heads=2)
    images = torch.randn(1, 256, 16, requires_grad=True)
    kept, peak = saved_bytes(block, images.shape), peak_bytes(block, images)
    matrices = 2 * 256**2 * 4
    assert kept >= 2 * matrices  # scores and probabilities
    assert kept < peak < 4 * kept  # the backward adds the matrices' gradients


def test_local_attention_adds_its_window_terms_one_at_a_time() -> None:
    """Eagerly, Σ over the k² offsets must not hold all k² output-sized terms at once.

    Measured in units of the logits (heads·k²·N): the peak is about 6 of them; holding the 49 terms adds
    C/heads = 8 more (the peak was 14 before the terms were added one at a time).
    """
    block = create_block("local", 32, num_heads=4, kernel_size=7)
    images = torch.randn(1, 32, 32, 32, requires_grad=True)
    logits_bytes = 4 * 49 * 32 * 32 * 4
    assert peak_bytes(block, images) < 10 * logits_bytes


def test_cost_command_writes_the_report_and_never_runs_sizes_over_the_measuring_limit(tmp_path, capsys) -> None:
    out = tmp_path / "cost"
    arguments = ["cost", "--sizes", "16,8", "--blocks", "pixel_vit,local,window", "--dim", "16", "--heads", "2"]
    settings = ["--kernel", "3", "--window", "4", "--measure-mib", "0.75", "--budget-gb", "0.0001", "--device", "cpu"]
    assert main([*arguments, *settings, "--out", str(out)]) == 0
    rows = {(row["design"], row["side"]): row for row in json.loads((out / "results.json").read_text())["rows"]}
    # Measured where the matrices and 8× the activations fit 768 KiB; mhsa at 16: 512 KiB of matrices, 8 × 82 KiB.
    assert rows["mhsa", 16]["measured"]
    assert rows["mhsa", 16]["measured_entries"] == 2 * 256**2
    assert rows["mhsa", 16]["peak_mib"] >= rows["mhsa", 16]["measured_activation_mib"] > 0
    assert rows["local", 16]["measured"]  # 8 × 91 KiB
    assert rows["local", 16]["measured_gflops"] == pytest.approx(rows["local", 16]["gflops"])
    assert not rows["window", 16]["measured"]  # 8 × 144 KiB: analytic only, never run
    assert "ms_forward_backward" not in rows["window", 16]
    # The budget, 0.0001 GiB = 105 KiB: mhsa keeps 82 KiB (but would materialise 512 KiB), window 144 KiB.
    assert rows["mhsa", 16]["fits_budget"]
    assert not rows["mhsa", 16]["matrices_fit_budget"]
    assert not rows["window", 16]["fits_budget"]
    report = (out / "results.md").read_text()
    assert "| mhsa | 16 | 131,072 | 0.5 | " in report
    assert report.index("| mhsa | 8 |") < report.index("| mhsa | 16 |")  # sides in order
    assert "768 GiB in fp32 per image" in report
    assert "entries all within 0.05%; FLOPs all within 0.05%; activations all within 0.05%" in report
    assert "- local: forward+backward peak" in report
    assert (out / "cost.png").read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "Over the 0.0001 GiB budget" in printed
    assert "): window from R = 16." in printed
    assert "would exceed 0.0001 GiB for mhsa from R = 16" in printed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--blocks", "pixl"], "Did you mean 'pixel_vit'?"),
        (["--sizes", "8,x"], "--sizes '8,x': expected comma-separated positive integers"),
        (["--dim", "10", "--heads", "3"], "heads=3 must divide dim=10"),
        (["--sizes", "2,8", "--patch", "4"], "image side 2 is smaller than the patch side 4"),
        (["--kernel", "6"], "kernel=6 must be odd"),
        (["--budget-gb", "0"], "--budget-gb 0.0: expected a finite number above 0"),
        (["--measure-mib", "nan"], "--measure-mib nan: expected a finite number at least 0"),
        (["--blocks", ","], "name at least one design"),
    ],
)
def test_cost_user_errors_exit_2(arguments, message, tmp_path, capsys) -> None:
    assert main(["cost", *arguments, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cost_on_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys) -> None:
    assert main(["cost", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_every_block_with_a_cost_entry_is_a_design() -> None:
    """A block states its cost in its own file; nothing here lists the blocks."""
    costed = {name for name in BLOCKS.names() if BLOCKS.get(name).cost_entry is not None}
    assert set(DESIGNS.names()) == costed | {"vit"}
    assert {"mhsa", "graph", "local", "local_relation", "window", "non_local"} <= costed
