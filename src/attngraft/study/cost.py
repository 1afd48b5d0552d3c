"""The cost of one attention layer as the image grows: analytic formulas, checked against the blocks themselves.

For an image side R (N = R² pixels), channels C and h heads, one layer on one image:

=============  ===============================  ==========================================
design         attention-matrix entries         forward FLOPs (2 per multiply-add)
=============  ===============================  ==========================================
pixel (mhsa)   h·N²                             8NC² + 4N²C
graph (pixel)  h·N²                             4NC² + 4NC + 2N²C
vit, patch p   h·T², T = (R/p)² + 1             8TC² + 4T²C
local, k×k     h·N·k²                           6NC² + 6NCk²
window, w×w    h·P·w², P = (⌈R/w⌉·w)²           8PC² + 4PCw²
non_local      N²                               4NC² + 2N²C
=============  ===============================  ==========================================

The pixel designs grow as R⁴, the windowed ones as R². This module is the first step of ``attngraft cost``: the
formulas and the measured counts they are tested against (entries from the recorded probabilities, exact; FLOPs
from ``torch.utils.flop_counter``, exact except ``local``: +2.9% at C = 32, k = 7, because the block's relative
logits go through an einsum the counter sees beside the block's own k×k formula).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attngraft._figures import pyplot, save_figure
from attngraft.blocks import create_block, record_attention
from attngraft.models.cost import flops
from attngraft.registry import Registry
from attngraft.study.measure import median_ms

BYTES_PER_ENTRY = 4  # fp32


@dataclass(frozen=True)
class LayerCost:
    """One layer's analytic cost on one image.

    Attributes:
        entries: Attention-matrix entries (all heads).
        flops: Forward FLOPs of the layer (projections and attention; not norms, softmax or the MLP).
    """

    entries: int
    flops: int

    @property
    def attention_bytes(self) -> int:
        """Memory of the attention matrices in fp32."""
        return self.entries * BYTES_PER_ENTRY


@dataclass(frozen=True)
class Design:
    """An attention design: its analytic cost and the block that realises it.

    Attributes:
        title: Display name.
        cost: ``(side, dim, heads) → LayerCost``.
        block: ``(dim, heads) → (block, input shape for side)``: the block and a function of the side giving its input.
    """

    title: str
    cost: Callable[[int, int, int], LayerCost]
    block: Callable[[int, int], tuple[nn.Module, Callable[[int], tuple[int, ...]]]]


DESIGNS: Registry[Design] = Registry("attention design")
PATCH_SIZE = 4
KERNEL_SIZE = 7
WINDOW_SIZE = 7


def _pixels(side: int) -> int:
    return side * side


def _tokens(channels: int) -> Callable[[int], tuple[int, ...]]:
    return lambda side: (1, _pixels(side), channels)


def _map(channels: int) -> Callable[[int], tuple[int, ...]]:
    return lambda side: (1, channels, side, side)


def _pixel_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(heads * pixels**2, 8 * pixels * dim**2 + 4 * pixels**2 * dim)


def _graph_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(heads * pixels**2, 4 * pixels * dim**2 + 4 * pixels * dim + 2 * pixels**2 * dim)


def _vit_cost(side: int, dim: int, heads: int) -> LayerCost:
    tokens = (side // PATCH_SIZE) ** 2 + 1
    return LayerCost(heads * tokens**2, 8 * tokens * dim**2 + 4 * tokens**2 * dim)


def _local_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(heads * pixels * KERNEL_SIZE**2, 6 * pixels * dim**2 + 6 * pixels * dim * KERNEL_SIZE**2)


def _window_cost(side: int, dim: int, heads: int) -> LayerCost:
    padded = (math.ceil(side / WINDOW_SIZE) * WINDOW_SIZE) ** 2
    return LayerCost(heads * padded * WINDOW_SIZE**2, 8 * padded * dim**2 + 4 * padded * dim * WINDOW_SIZE**2)


def _non_local_cost(side: int, dim: int, heads: int) -> LayerCost:
    pixels = _pixels(side)
    return LayerCost(pixels**2, 4 * pixels * dim**2 + 2 * pixels**2 * dim)


def _vit_input(dim: int) -> Callable[[int], tuple[int, ...]]:
    return lambda side: (1, (side // PATCH_SIZE) ** 2 + 1, dim)


DESIGNS.add(
    "pixel",
    Design(
        "pixel transformer (mhsa)",
        _pixel_cost,
        lambda dim, heads: (create_block("mhsa", dim, num_heads=heads), _tokens(dim)),
    ),
)
DESIGNS.add(
    "graph",
    Design(
        "graph attention on pixels",
        _graph_cost,
        lambda dim, heads: (create_block("graph", dim, num_heads=heads), _tokens(dim)),
    ),
)
DESIGNS.add(
    "vit",
    Design(
        f"ViT, {PATCH_SIZE}×{PATCH_SIZE} patches",
        _vit_cost,
        lambda dim, heads: (create_block("mhsa", dim, num_heads=heads), _vit_input(dim)),
    ),
)
DESIGNS.add(
    "local",
    Design(
        f"SASA local {KERNEL_SIZE}×{KERNEL_SIZE}",
        _local_cost,
        lambda dim, heads: (create_block("local", dim, num_heads=heads, kernel_size=KERNEL_SIZE), _map(dim)),
    ),
)
DESIGNS.add(
    "window",
    Design(
        f"Swin windows {WINDOW_SIZE}×{WINDOW_SIZE}",
        _window_cost,
        lambda dim, heads: (create_block("window", dim, num_heads=heads, window_size=WINDOW_SIZE), _map(dim)),
    ),
)
DESIGNS.add(
    "non_local",
    Design("non-local", _non_local_cost, lambda dim, heads: (create_block("non_local", dim), _map(dim))),
)


def measured_cost(design: str, side: int, dim: int, heads: int) -> LayerCost:
    """The layer's attention entries (recorded probabilities) and FLOPs (``flop_counter``), measured on one image.

    Runs the block once on a random input: use it only for sizes that fit in memory.
    """
    block, input_shape = DESIGNS.get(design).block(dim, heads)
    return _entries_and_flops(block, input_shape(side))


def _entries_and_flops(block: nn.Module, shape: tuple[int, ...]) -> LayerCost:
    block.eval()
    with torch.no_grad(), record_attention(block) as records:
        block(torch.randn(*shape))
    entries = sum(probabilities.numel() for calls in records.values() for probabilities in calls)
    return LayerCost(entries, flops(block, shape))


def available_memory_bytes() -> int:
    """The memory the machine can still give (``MemAvailable`` of /proc/meminfo; 8 GiB where unknown)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


def _saved_bytes(block: nn.Module, shape: tuple[int, ...]) -> int:
    """Bytes of the tensors one training forward of ``block`` keeps for its backward, counted once per storage."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        block.train()(torch.randn(*shape, requires_grad=True))
    return sum(storages.values())


def cost_rows(
    designs: Sequence[str], sides: Sequence[int], *, dim: int, heads: int, measure_bytes: int, repeats: int = 3
) -> list[dict[str, Any]]:
    """One row per (design, side): the analytic cost, and where it fits ``measure_bytes``, the measured one.

    A size whose attention matrices alone exceed ``measure_bytes`` is reported as analytic only, never run.
    Measured: attention entries, FLOPs, saved activations for the backward, forward+backward time (median).
    """
    rows = []
    for name in designs:
        design = DESIGNS.get(name)
        for side in sides:
            analytic = design.cost(side, dim, heads)
            row: dict[str, Any] = {
                "design": name,
                "title": design.title,
                "side": side,
                "entries": analytic.entries,
                "attention_mib": analytic.attention_bytes / 2**20,
                "gflops": analytic.flops / 1e9,
                "measured": analytic.attention_bytes <= measure_bytes,
            }
            if row["measured"]:
                row |= _measure(name, side, dim, heads, repeats)
            rows.append(row)
    return rows


def _measure(name: str, side: int, dim: int, heads: int, repeats: int) -> dict[str, Any]:
    """The measured columns of one row; the block is built once and serves every measurement."""
    block, input_shape = DESIGNS.get(name).block(dim, heads)
    shape = input_shape(side)
    measured = _entries_and_flops(block, shape)
    saved = _saved_bytes(block, shape)
    images = torch.randn(*shape, requires_grad=True)

    def step() -> None:
        block(images).sum().backward()

    return {
        "measured_entries": measured.entries,
        "measured_gflops": measured.flops / 1e9,
        "saved_mib": saved / 2**20,
        "ms_forward_backward": median_ms(step, repeats),
    }


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table; analytic-only sizes show "—" in the measured columns."""
    lines = [
        "| design | side | attention entries | attention MiB | GFLOPs | measured entries | measured GFLOPs "
        "| saved for backward MiB | fwd+bwd ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        measured = (
            [
                f"{row['measured_entries']:,}",
                f"{row['measured_gflops']:.3f}",
                f"{row['saved_mib']:.1f}",
                f"{row['ms_forward_backward']:.1f}",
            ]
            if row["measured"]
            else ["—"] * 4
        )
        cells = [
            row["design"],
            str(row["side"]),
            f"{row['entries']:,}",
            f"{row['attention_mib']:,.1f}",
            f"{row['gflops']:.3f}",
            *measured,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_notes(rows: Sequence[dict[str, Any]]) -> str:
    """What the table shows beside the numbers: the R⁴ figure, and why saved memory differs from the matrices."""
    pixel = DESIGNS.get("pixel").cost(128, 64, 16)
    lines = [
        f"- A pixel transformer on a 128×128 image with 48 layers of 16 heads holds 48 × 16 × 128⁴ = "
        f"{48 * pixel.entries:,} attention entries: {48 * pixel.attention_bytes / 2**30:,.0f} GiB in fp32 per image.",
        "- Measured entries (the recorded probabilities) ÷ formula, largest deviation: "
        f"{_largest_deviation(rows, 'measured_entries', 'entries'):.2%}; measured FLOPs ÷ formula: "
        + ", ".join(f"{name} {value:+.1%}" for name, value in _flop_deviations(rows).items())
        + " (local: an einsum of its relative logits is counted beside its own k×k formula).",
        "- Saved for backward ÷ attention matrices, per design (median over the measured sizes): "
        + ", ".join(f"{name} {ratio:.2f}" for name, ratio in _saved_ratios(rows).items())
        + ". Fused attention (pixel, vit: PyTorch's flash kernel) keeps no matrix and recomputes it in the backward,"
        " so it saves far less than its matrices; graph and window keep scores and probabilities (about 2×); local"
        " and non-local keep the probabilities (about 1×) beside their inputs.",
    ]
    return "\n".join(lines)


def _largest_deviation(rows: Sequence[dict[str, Any]], measured: str, analytic: str) -> float:
    deviations = [abs(row[measured] / row[analytic] - 1) for row in rows if row["measured"] and row[analytic]]
    return max(deviations, default=0.0)


def _flop_deviations(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    deviations: dict[str, float] = {}
    for row in rows:
        if row["measured"] and row["gflops"] > 0:
            deviation = row["measured_gflops"] / row["gflops"] - 1
            deviations[row["design"]] = max(deviations.get(row["design"], 0.0), deviation, key=abs)
    return deviations


def _saved_ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    ratios: dict[str, list[float]] = {}
    for row in rows:
        if row["measured"] and row["attention_mib"] > 0:
            ratios.setdefault(row["design"], []).append(row["saved_mib"] / row["attention_mib"])
    return {name: statistics.median(values) for name, values in ratios.items()}


def plot_costs(rows: Sequence[dict[str, Any]], path: Path, budget_mib: float) -> None:
    """Log-log plots against the image side: attention memory and forward+backward time.

    Memory: analytic attention matrices (lines), measured bytes saved for the backward (points), the measuring
    budget (dashed).
    """
    plt = pyplot()
    figure, (memory_axes, time_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(row["design"] for row in rows):
        own = [row for row in rows if row["design"] == name]
        line = memory_axes.plot([row["side"] for row in own], [row["attention_mib"] for row in own], label=name)[0]
        measured = [row for row in own if row["measured"]]
        memory_axes.plot(
            [row["side"] for row in measured], [row["saved_mib"] for row in measured], "o", color=line.get_color()
        )
        time_axes.plot(
            [row["side"] for row in measured], [row["ms_forward_backward"] for row in measured], "o-", label=name
        )
    memory_axes.axhline(budget_mib, linestyle="--", color="grey")
    memory_axes.set(ylabel="MiB per layer and image", title="attention matrices (lines), saved for backward (points)")
    time_axes.set(ylabel="ms", title="one layer, forward + backward, CPU")
    for axes in (memory_axes, time_axes):
        axes.set(xscale="log", yscale="log", xlabel="image side R (pixels)")
        axes.grid(True, alpha=0.3, which="both")
    memory_axes.legend(fontsize=8)
    save_figure(figure, path)
