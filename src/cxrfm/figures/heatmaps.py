"""The per-label heatmap figure of a classifier (paper Figs. 9 / 11)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def save_heatmap_figure(
    path: str | Path,
    images: np.ndarray | torch.Tensor,
    heatmaps: np.ndarray | torch.Tensor,
    probabilities: np.ndarray | torch.Tensor,
    label_names: Sequence[str],
    labels: np.ndarray | torch.Tensor | None = None,
    thresholds: Sequence[float] | None = None,
    *,
    panel_inches: float = 2.4,
    alpha: float = 0.45,
    dpi: int = 110,
) -> Path:
    """One row per image: the image (ground truth in the title), then each label's heat overlay
    titled with its name and predicted probability (bold when called positive).

    Args:
        images: ``(N, 1, H, W)`` or ``(N, H, W)`` in ``[0, 1]``.
        heatmaps: ``(N, K, H, W)`` in ``[0, 1]``.
        probabilities: ``(N, K)``.
        labels: ``(N, K)`` ground truth (1 / 0 / NaN) or None.
        thresholds: ``(K,)`` decision thresholds (default 0.5).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, heatmaps, probabilities = (_numpy(a) for a in (images, heatmaps, probabilities))
    images = images[:, 0] if images.ndim == 4 else images
    thresholds = np.full(len(label_names), 0.5) if thresholds is None else np.asarray(thresholds)
    rows, columns = images.shape[0], len(label_names) + 1
    figure = Figure(figsize=(columns * panel_inches, rows * (panel_inches + 0.3)))
    FigureCanvasAgg(figure)
    for row in range(rows):
        axis = figure.add_subplot(rows, columns, row * columns + 1)
        axis.imshow(images[row], cmap="gray", vmin=0, vmax=1)
        truth = "" if labels is None else _truth_text(_numpy(labels)[row], label_names)
        axis.set_title(truth or "image", fontsize=8)
        axis.axis("off")
        for k, name in enumerate(label_names):
            axis = figure.add_subplot(rows, columns, row * columns + k + 2)
            axis.imshow(images[row], cmap="gray", vmin=0, vmax=1)
            axis.imshow(heatmaps[row, k], cmap="jet", vmin=0, vmax=1, alpha=alpha)
            positive = probabilities[row, k] >= thresholds[k]
            axis.set_title(f"{name}\np = {probabilities[row, k]:.2f}", fontsize=8, fontweight="bold" if positive else "normal")
            axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def _truth_text(row: np.ndarray, label_names: Sequence[str]) -> str:
    positives = [name for name, value in zip(label_names, row) if value == 1]
    # Wrapped so long lists stay inside their panel.
    return textwrap.fill("truth: " + (", ".join(positives) if positives else "none of these"), width=28)


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)
