"""Figures: an image beside its attribution and attention maps, blended over it by Captum's visualisation helper."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import visualization

from attngraft._figures import pyplot, save_figure

PANEL_INCHES = 2.0


@dataclass(frozen=True)
class Panel:
    """One map to draw over an image.

    Attributes:
        title: Panel title.
        values: The map, at the image's size.
        sign: Which values to show: "all" (diverging colours), "positive" or "absolute_value".
        marker: A pixel (row, col) to mark with a cross (a map block's query pixel).

    Shape:
        - values: (H, W).
    """

    title: str
    values: torch.Tensor
    sign: str = "positive"
    marker: tuple[int, int] | None = None


@dataclass(frozen=True)
class Row:
    """An image and its panels, drawn as one row.

    Attributes:
        title: Title of the image's own panel (e.g. true and predicted class).
        image: Displayable image, values in [0, 1].
        panels: Maps over it.

    Shape:
        - image: (H, W, C).
    """

    title: str
    image: np.ndarray
    panels: Sequence[Panel]


def displayable(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (C, H, W) image back to (H, W, C) values in [0, 1]."""
    scale = torch.tensor(std, dtype=image.dtype)[:, None, None]
    shift = torch.tensor(mean, dtype=image.dtype)[:, None, None]
    channels = image.shape[0]
    if scale.shape[0] != channels:  # grey statistics for images replicated to RGB
        scale, shift = scale[:1].expand(channels, 1, 1), shift[:1].expand(channels, 1, 1)
    return (image.detach().cpu() * scale + shift).clamp(0, 1).permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class Tile:
    """One square of a figure grid: an image, a map over it, or (without an image) a text label.

    Shape:
        - image: (H, W, C), values in [0, 1].
    """

    title: str
    image: np.ndarray | None = None
    panel: Panel | None = None


def draw_rows(rows: Sequence[Row], path: Path, *, title: str | None = None) -> None:
    """One row per image: the image, then each panel blended over it; written to ``path`` (PNG)."""
    grid = [
        [Tile(row.title, row.image), *(Tile(panel.title, row.image, panel) for panel in row.panels)] for row in rows
    ]
    draw_grid(grid, path, title=title)


def draw_grid(tiles: Sequence[Sequence[Tile]], path: Path, *, title: str | None = None) -> None:
    """Draws rows of tiles (images, maps over images, text labels) and writes the figure to ``path`` (PNG)."""
    plt = pyplot()
    columns = max((len(row) for row in tiles), default=1)
    figure, axes = plt.subplots(
        len(tiles), columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES * len(tiles) + 0.4), squeeze=False
    )
    for row, row_axes in zip(tiles, axes, strict=True):
        for tile_axes, tile in zip(row_axes, row, strict=False):
            if tile.image is None:
                tile_axes.text(0.5, 0.5, tile.title, ha="center", va="center", wrap=True, fontsize=9)
            elif tile.panel is None:
                _draw_image(tile_axes, tile.image, tile.title)
            else:
                _draw_panel(figure, tile_axes, tile.image, tile.panel)
                tile_axes.set_title(tile.title, fontsize=8)
            tile_axes.axis("off")
        for unused in row_axes[len(row) :]:
            unused.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def _draw_image(axes: Any, image: np.ndarray, title: str) -> None:
    if image.shape[2] == 1:
        axes.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        axes.imshow(image)
    axes.set_title(title, fontsize=8)
    axes.axis("off")


def _draw_panel(figure: Any, axes: Any, image: np.ndarray, panel: Panel) -> None:
    values = panel.values.detach().cpu().float().numpy()[:, :, None]  # (H, W, 1)
    with warnings.catch_warnings():  # an all-zero map: Captum warns that it cannot normalise, and draws it blank
        warnings.simplefilter("ignore", UserWarning)
        visualization.visualize_image_attr(
            values,
            image,
            method="blended_heat_map",
            sign=panel.sign,
            plt_fig_axis=(figure, axes),
            cmap=None if panel.sign == "all" else "jet",
            alpha_overlay=0.5,
            use_pyplot=False,
        )
    if panel.marker is not None:
        axes.plot(panel.marker[1], panel.marker[0], marker="+", color="white", markersize=10, markeredgewidth=2)
    axes.set_title(panel.title, fontsize=8)
    axes.axis("off")
