"""A study's figures: accuracy against CPU latency, and the training curves of every run (matplotlib, Agg)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attngraft._figures import pyplot, save_figure
from attngraft.data.datamodule import ImageDataModule
from attngraft.explain import METHODS, ExplainSettings, explain_images
from attngraft.explain.explainer import display_statistics, with_black_baseline
from attngraft.explain.figures import Tile, displayable, draw_grid
from attngraft.explain.inputs import official_test_samples


def plot_accuracy_latency(summary: Sequence[dict[str, Any]], dataset: str, path: Path, latency: str) -> None:
    """Test accuracy (mean ± std over seeds) against CPU ms/image at one batch size, one labelled point per cell."""
    plt = pyplot()
    rows = [row for row in summary if row["dataset"] == dataset and latency in row]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        error = 0.0 if math.isnan(row["test_acc_std"]) else 100 * row["test_acc_std"]
        marker = "s" if row["pretrained"] == "yes" else "o"
        axes.errorbar(row[latency], 100 * row["test_acc"], yerr=error, fmt=marker, capsize=3)
        axes.annotate(
            row["model"], (row[latency], 100 * row["test_acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    axes.set_xscale("log")
    axes.set_xlabel(f"CPU latency, ms/image at batch {latency.removeprefix('latency_ms_b')} (log)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{dataset}: accuracy vs latency (squares: pretrained backbone)")
    axes.grid(True, alpha=0.3)
    save_figure(figure, path)


def plot_training_curves(runs: Sequence[tuple[str, Path]], path: Path) -> None:
    """Validation accuracy and training loss per epoch of each run, from its ``metrics.csv``."""
    plt = pyplot()
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, metrics in runs:
        epochs = read_epoch_metrics(metrics)
        if not epochs:
            continue
        numbers = sorted(epochs)
        val = [(epoch + 1, epochs[epoch]["val_acc"]) for epoch in numbers if "val_acc" in epochs[epoch]]
        loss = [
            (epoch + 1, epochs[epoch]["train_loss_epoch"]) for epoch in numbers if "train_loss_epoch" in epochs[epoch]
        ]
        if val:
            accuracy_axes.plot(*zip(*[(x, 100 * y) for x, y in val], strict=True), marker="o", label=label)
        if loss:
            loss_axes.plot(*zip(*loss, strict=True), marker="o", label=label)
    accuracy_axes.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="training loss (epoch mean)")
    from matplotlib.ticker import MaxNLocator

    for axes in (accuracy_axes, loss_axes):
        axes.grid(True, alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.legend(fontsize=7)
    save_figure(figure, path)


def plot_attributions(
    models: Sequence[tuple[str, nn.Module, ImageDataModule]], images: int, method: str, path: Path
) -> None:
    """A grid: the first ``images`` test images on top, then one row per model with its attributions over them.

    Each model explains its own predicted class, on the images as its own data module prepares them.
    """
    grid: list[list[Tile]] = []
    for label, network, datamodule in models:
        samples = official_test_samples(datamodule, images, 0)
        statistics = display_statistics(datamodule)
        shown = [displayable(sample.image, *statistics) for sample in samples]
        settings = with_black_baseline(ExplainSettings(methods=[method]), statistics, samples[0].image.shape[0])
        explanations = explain_images(network, torch.stack([sample.image for sample in samples]), settings)
        if not grid:
            truths = [f"true {datamodule.classes[int(sample.label or 0)]}" for sample in samples]
            grid.append(
                [Tile("test images")] + [Tile(truth, image) for truth, image in zip(truths, shown, strict=True)]
            )
        row = [Tile(label)]
        for image, explanation in zip(shown, explanations, strict=True):
            title = f"pred {datamodule.classes[explanation.prediction]} ({100 * explanation.probability:.0f}%)"
            row.append(Tile(title, image, explanation.panels[0]))
        grid.append(row)
    draw_grid(grid, path, title=f"{METHODS.get(method).title} of the predicted class")


def read_epoch_metrics(path: Path) -> dict[int, dict[str, float]]:
    """Lightning's ``metrics.csv`` folded to epoch → {metric: value} (the epoch-level values)."""
    if not path.is_file():
        return {}
    epochs: dict[int, dict[str, float]] = {}
    with path.open(newline="") as handle:
        for line in csv.DictReader(handle):
            if not line.get("epoch"):
                continue
            values = epochs.setdefault(int(float(line["epoch"])), {})
            for key, value in line.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    values[key] = float(value)
    return epochs
