"""Matplotlib without a display, and PNGs written atomically: shared by every report."""
from __future__ import annotations

from pathlib import Path

from prunerec.io import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Lay out, write atomically, and free the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
