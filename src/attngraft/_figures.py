"""Figure plumbing shared by the rooms that draw (study, explain): the Agg backend and atomic PNG writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attngraft._io import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, *, dpi: int = 120) -> None:
    """Writes ``figure`` to ``path`` as PNG through a temporary file, then closes it."""
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    pyplot().close(figure)
