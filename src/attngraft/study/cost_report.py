"""``attngraft cost``: the designs' costs at each image side, measured where they fit; table, notes and plots."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from attngraft._figures import pyplot, save_figure
from attngraft._io import write_json, write_text
from attngraft.study.cost import BYTES_PER_ELEMENT, DESIGNS, CostConfig, layer_cost, peak_bytes
from attngraft.study.measure import machine, median_ms
from attngraft.study.report import write_rows

MIB = 2**20
# Sizes are measured when the larger of their matrices (recording materialises them) and this many times their
# kept activations fits the measuring limit: the forward+backward peaks measured 1.6–6.2× the activations.
PEAK_ESTIMATE = 8
LINE_STYLES = ["-", "--", "-.", ":"]


def available_memory_bytes(device: torch.device) -> int:
    """The memory the device can still give: CUDA's free memory, else ``MemAvailable`` or the free pages.

    Raises:
        RuntimeError: Where the system says neither (pass a budget explicitly there).
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        raise RuntimeError("cannot tell this machine's free memory: give the budget with --budget-gb") from None


def gib(size: float) -> str:
    """Bytes as GiB with three significant digits (a small budget stays readable)."""
    return f"{size / 2**30:.3g} GiB"


def cost_rows(
    designs: Sequence[str],
    sides: Sequence[int],
    config: CostConfig,
    *,
    measure_bytes: int,
    budget_bytes: int,
    device: torch.device,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """One row per (design, side): the analytic cost, and where it fits ``measure_bytes``, the measured one.

    A size whose matrices or estimated peak (:data:`PEAK_ESTIMATE` × its activations) exceed ``measure_bytes`` is
    analytic only, never run. A row fits the budget when its activations (the memory one layer keeps to train on
    one image) fit ``budget_bytes``.
    """
    rows = []
    for name in designs:
        design = DESIGNS.get(name)
        for side in sides:
            analytic = design.cost(side, config)
            row: dict[str, Any] = {
                "design": name,
                "title": design.title(config),
                "side": side,
                "entries": analytic.entries,
                "attention_mib": analytic.attention_bytes / MIB,
                "gflops": analytic.flops / 1e9,
                "activation_mib": analytic.activation_bytes / MIB,
                "fits_budget": analytic.activation_bytes <= budget_bytes,
                "matrices_fit_budget": analytic.attention_bytes <= budget_bytes,
                "measured": max(analytic.attention_bytes, PEAK_ESTIMATE * analytic.activation_bytes) <= measure_bytes,
            }
            if row["measured"]:
                row |= _measure(name, side, config, device, repeats)
            rows.append(row)
    return rows


def _measure(name: str, side: int, config: CostConfig, device: torch.device, repeats: int) -> dict[str, Any]:
    """The measured columns of one row; the block is built once and serves every measurement."""
    design = DESIGNS.get(name)
    block, shape = design.block(config).to(device), design.input_shape(side, config)
    measured = layer_cost(block, shape)
    images = torch.randn(*shape, device=device, requires_grad=True)

    def step() -> None:
        block(images).sum().backward()

    peak, milliseconds = peak_bytes(block, images), median_ms(step, repeats)
    return {
        "measured_entries": measured.entries,
        "measured_gflops": measured.flops / 1e9,
        "measured_activation_mib": measured.activation_bytes / MIB,
        "peak_mib": peak / MIB,
        "ms_forward_backward": milliseconds,
    }


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table; analytic-only sizes show "—" in the measured columns."""
    lines = [
        "| design | R | attention entries | matrices MiB | GFLOPs | activations MiB | activations fit budget "
        "| measured entries | measured GFLOPs | measured activations MiB | fwd+bwd peak MiB | fwd+bwd ms |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        measured = (
            [
                f"{row['measured_entries']:,}",
                f"{row['measured_gflops']:.3f}",
                f"{row['measured_activation_mib']:,.1f}",
                f"{row['peak_mib']:,.1f}",
                f"{row['ms_forward_backward']:,.1f}",
            ]
            if row["measured"]
            else ["—"] * 5
        )
        cells = [
            row["design"],
            str(row["side"]),
            f"{row['entries']:,}",
            f"{row['attention_mib']:,.1f}",
            f"{row['gflops']:.3f}",
            f"{row['activation_mib']:,.1f}",
            "yes" if row["fits_budget"] else "**no**",
            *measured,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_notes(rows: Sequence[dict[str, Any]], budget_bytes: int) -> str:
    """What the table shows beside the numbers: the R⁴ figure, formula against measurement, peaks, the budget."""
    pixel = DESIGNS.get("mhsa").cost(128, CostConfig(heads=16))
    comparisons = "; ".join(
        f"{label} {_listing(_deviations(rows, f'measured_{column}', column))}"
        for label, column in (("entries", "entries"), ("FLOPs", "gflops"), ("activations", "activation_mib"))
    )
    return "\n".join(
        [
            f"- A pixel transformer on a 128×128 image with 48 layers of 16 heads holds 48 × 16 × 128⁴ = "
            f"{48 * pixel.entries:,} attention entries: {48 * pixel.attention_bytes / 2**30:,.0f} GiB in fp32 per "
            "image.",
            f"- Measured ÷ formula, largest deviation per design: {comparisons}.",
            *_peak_notes(rows),
            *_budget_notes(rows, budget_bytes),
        ]
    )


def _deviations(rows: Sequence[dict[str, Any]], measured: str, analytic: str) -> dict[str, float]:
    """The largest signed deviation of measured from analytic per design, over the measured rows."""
    deviations: dict[str, float] = {}
    for row in rows:
        if row["measured"] and row[analytic] > 0:
            deviation = row[measured] / row[analytic] - 1
            deviations[row["design"]] = max(deviations.get(row["design"], 0.0), deviation, key=abs)
    return deviations


def _listing(deviations: dict[str, float]) -> str:
    """``all within 0.05%``, or each design's deviation, those over 10% flagged."""
    if not deviations:
        return "not measured"
    if all(abs(value) < 5e-4 for value in deviations.values()):
        return "all within 0.05%"
    return ", ".join(
        f"{name} {value:+.1%}" + (" (OVER 10%)" if abs(value) > 0.1 else "") for name, value in deviations.items()
    )


def _peak_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The forward+backward peak ÷ the kept activations per measured design, and what each backward adds."""
    ratios: dict[str, list[float]] = {}
    for row in rows:
        if row["measured"] and row["activation_mib"] > 0:
            ratios.setdefault(row["design"], []).append(row["peak_mib"] / row["activation_mib"])
    return [
        f"- {name}: forward+backward peak {statistics.median(values):.1f}× the kept activations (median over "
        f"{len(values)} sizes); the backward adds {DESIGNS.get(name).backward}."
        for name, values in ratios.items()
    ]


def _budget_notes(rows: Sequence[dict[str, Any]], budget_bytes: int) -> list[str]:
    over = _first_sides(rows, "fits_budget")
    fused = {name: side for name, side in _first_sides(rows, "matrices_fit_budget").items() if DESIGNS.get(name).fused}
    lines = [
        f"- Over the {gib(budget_bytes)} budget (one layer's kept activations, one image; the peak needs the "
        "multiple above): " + (", ".join(f"{name} from R = {side}" for name, side in over.items()) or "none") + "."
    ]
    if fused:
        lines.append(
            f"- Materialised, the attention matrices would exceed {gib(budget_bytes)} for "
            + ", ".join(f"{name} from R = {side}" for name, side in fused.items())
            + "; these blocks never materialise them (fused kernels), so their memory grows only as R², while their"
            " time still grows as R⁴."
        )
    return lines


def _first_sides(rows: Sequence[dict[str, Any]], fits: str) -> dict[str, int]:
    """Per design, the smallest side whose row does not fit (designs that always fit are absent)."""
    first: dict[str, int] = {}
    for row in rows:
        if not row[fits]:
            first[row["design"]] = min(first.get(row["design"], row["side"]), row["side"])
    return first


def plot_costs(rows: Sequence[dict[str, Any]], path: Path, budget_mib: float) -> None:
    """Log-log plots against the image side: attention matrices, training memory, forward+backward time.

    Lines are the formulas; points are measurements (memory: the forward+backward peak). Dashed: the budget.
    """
    plt = pyplot()
    figure, (matrix_axes, memory_axes, time_axes) = plt.subplots(1, 3, figsize=(15, 4.4))
    designs = list(dict.fromkeys(row["design"] for row in rows))
    for index, name in enumerate(designs):
        own = [row for row in rows if row["design"] == name]
        measured = [row for row in own if row["measured"]]
        sides = [row["side"] for row in own]
        style = {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "label": name}  # designs may coincide
        color = matrix_axes.plot(sides, [row["attention_mib"] for row in own], **style)[0].get_color()
        memory_axes.plot(sides, [row["activation_mib"] for row in own], color=color, **style)
        memory_axes.plot([row["side"] for row in measured], [row["peak_mib"] for row in measured], "o", color=color)
        time_axes.plot(
            [row["side"] for row in measured], [row["ms_forward_backward"] for row in measured], "o-", color=color
        )
    for axes in (matrix_axes, memory_axes):
        axes.axhline(budget_mib, linestyle="--", color="grey", label="budget")
        axes.set(ylabel="MiB per layer and image")
    matrix_axes.set(title="attention matrices, materialised")
    memory_axes.set(title="kept for backward (lines), fwd+bwd peak (points)")
    time_axes.set(ylabel="ms", title="one layer, forward + backward, measured")
    all_sides = sorted({row["side"] for row in rows})
    for axes in (matrix_axes, memory_axes, time_axes):
        axes.set(xlabel="image side R (pixels)")
        axes.grid(True, alpha=0.3)
        if not _has_positive_data(axes):  # nothing measured (or only zeros): a log scale has nothing to show
            axes.text(0.5, 0.5, "nothing to show on a log scale", ha="center", va="center", transform=axes.transAxes)
            continue
        axes.set(xscale="log", yscale="log")
        axes.set_xticks(all_sides, [str(side) for side in all_sides])
        axes.minorticks_off()
    matrix_axes.legend(fontsize=8)
    save_figure(figure, path)


def _has_positive_data(axes: Any) -> bool:
    """Whether any line of ``axes`` (the budget line aside) has a point with positive x and y."""
    for line in axes.get_lines():
        if line.get_label() == "budget":
            continue
        if any(x > 0 and y > 0 for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)):
            return True
    return False


def write_cost_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    config: CostConfig,
    budget_bytes: int,
    measure_bytes: int,
    command: str,
    device: torch.device,
) -> str:
    """Writes results.md, results.csv, results.json and cost.png to ``out``; returns the table and notes."""
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    summary = cost_table(rows) + "\n\n" + cost_notes(rows, budget_bytes)
    header = (
        f"# Attention cost per layer and image (C = {config.dim}, {config.heads} heads, p = {config.patch}, "
        f"k = {config.kernel}, w = {config.window}, fp{8 * BYTES_PER_ELEMENT})\n\n"
        f"- Command: `{command}`\n- Measured on: {device_name}; budget {gib(budget_bytes)}\n"
        "- Analytic columns: each block's formula (its `cost_entry`, beside the block in `attngraft.blocks`); "
        "measured columns: the blocks on one random "
        f"image, for sizes whose matrices and estimated peak ({PEAK_ESTIMATE}× the activations) fit "
        f"{measure_bytes / MIB:,.0f} MiB (the others are analytic only, never run)\n"
    )
    write_rows(out, rows)
    write_json(
        out / "results.json",
        {
            **asdict(config),
            "budget_bytes": budget_bytes,
            "measure_bytes": measure_bytes,
            "device": device_name,
            **machine(),
            "rows": list(rows),
        },
    )
    write_text(out / "results.md", header + "\n" + summary + "\n\n![cost](cost.png)\n")
    plot_costs(rows, out / "cost.png", budget_bytes / MIB)
    return summary
