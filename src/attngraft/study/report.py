"""A study's results: per-run rows to CSV/JSON, the mean ± std table as Markdown, and the plots."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attngraft._io import atomic_path

# Columns averaged over seeds (test accuracy also gets its standard deviation).
MEAN_COLUMNS = (
    "test_acc",
    "val_acc",
    "params_m",
    "trainable_params_m",
    "gflops",
    "train_time_s",
)
KEY_COLUMNS = ("dataset", "study_cell", "model", "pretrained", "attention", "epochs", "train_images", "input")


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, cell), in first-seen order: means over seeds, test accuracy's std, the seed count.

    Shape:
        - ``test_acc_std`` is the sample standard deviation (n - 1), NaN for a single seed.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["study_cell"]), []).append(row)
    summary = []
    for group in groups.values():
        first = group[0]
        entry: dict[str, Any] = {key: first[key] for key in KEY_COLUMNS if key in first}
        numeric = [*MEAN_COLUMNS, *(key for key in first if key.startswith(("latency_ms_", "max_test_acc")))]
        for key in numeric:
            values = [float(row[key]) for row in group if key in row]
            entry[key] = statistics.fmean(values) if values else math.nan
        accuracies = [float(row["test_acc"]) for row in group]
        entry["test_acc_std"] = statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan
        entry["seeds"] = len(group)
        summary.append(entry)
    return summary


def latency_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The ``latency_ms_b<batch>`` columns present in ``rows``, by batch size."""
    columns = {key for row in rows for key in row if key.startswith("latency_ms_b")}
    return sorted(columns, key=lambda key: int(key.removeprefix("latency_ms_b")))


def markdown_table(summary: Sequence[dict[str, Any]], dataset: str) -> str:
    """The summary rows of ``dataset`` as a Markdown table (accuracy in %, mean ± std over seeds)."""
    rows = [row for row in summary if row["dataset"] == dataset]
    latencies = latency_columns(rows)
    with_max = any("max_test_acc" in row for row in rows)
    header = [
        "model",
        "pretrained",
        "attention",
        "epochs",
        "train images",
        "test acc (%)",
        *(["max test acc (%)"] if with_max else []),
        "params total / trainable (M)",
        "GFLOPs",
        *(f"CPU ms/img @{key.removeprefix('latency_ms_b')}" for key in latencies),
        "train time (s)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for row in rows:
        cells = [
            row["model"],
            row["pretrained"],
            row["attention"],
            str(row["epochs"]),
            f"{row['train_images']:,}" if "train_images" in row else "?",
            _accuracy(row),
            *([f"{100 * row.get('max_test_acc', math.nan):.2f}"] if with_max else []),
            f"{row['params_m']:.2f} / {row['trainable_params_m']:.2f}",
            f"{row['gflops']:.3f}",
            *(f"{row[key]:.3f}" for key in latencies),
            f"{row['train_time_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _accuracy(row: dict[str, Any]) -> str:
    mean = 100 * row["test_acc"]
    if row["seeds"] < 2:
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {100 * row['test_acc_std']:.2f} ({row['seeds']} seeds)"


def write_rows(directory: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``results.csv``: one line per run (every seed), columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with atomic_path(directory / "results.csv") as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
