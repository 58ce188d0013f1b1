"""Figures of phantom cases: a gallery of radiographs with their lung contours and findings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrfm.data.phantom import PhantomCase


def _finding_title(case: PhantomCase) -> str:
    parts = []
    for name, options in case.meta.get("findings", {}).items():
        where = options.get("side") or options.get("lobe")
        parts.append(f"{name} ({where})" if where else name)
    return ", ".join(parts) or "No Finding"


def save_phantom_gallery(
    cases: Sequence[PhantomCase],
    path: str | Path,
    *,
    columns: int | None = None,
    panel_inches: float = 3.2,
    dpi: int = 120,
    contour_color: str = "#ff8c00",
) -> Path:
    """A grid of phantoms with their lung contours outlined and their findings as titles.

    Args:
        cases: phantoms to show (any sizes).
        path: output image (PNG, PDF, ... by suffix); its folder is created.
        columns: panels per row (default: up to 4).

    Returns:
        ``path``.
    """
    if not cases:
        raise ValueError("save_phantom_gallery needs at least one case")
    columns = columns or min(4, len(cases))
    rows = math.ceil(len(cases) / columns)
    aspect = cases[0].image.shape[0] / cases[0].image.shape[1]
    figure = Figure(figsize=(columns * panel_inches, rows * (panel_inches * aspect + 0.35)))
    FigureCanvasAgg(figure)
    for index, case in enumerate(cases):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.imshow(case.image, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        axis.contour(case.lung_mask, levels=[0.5], colors=contour_color, linewidths=0.9)
        axis.set_title(f"seed {case.meta['seed']}: {_finding_title(case)}", fontsize=7.5, wrap=True)
        axis.set_axis_off()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
