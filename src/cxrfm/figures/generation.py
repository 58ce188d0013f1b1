"""Figures of report-to-image generation: report text -> generated image beside the real one, and a
classifier-free guidance sweep."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_generation_examples(reports: list[str], generated: np.ndarray, real: np.ndarray | None, path: Path,
                             title: str | None = None) -> Path:
    """One row per report: its text | the generated image ``(N, H, W)`` | the real image (if given)."""
    plt = _pyplot()
    columns = 3 if real is not None else 2
    figure, axes = plt.subplots(len(reports), columns, figsize=(3.2 * columns, 2.9 * len(reports)), squeeze=False)
    for row, report in enumerate(reports):
        text_axis = axes[row, 0]
        text_axis.axis("off")
        text_axis.text(0.0, 1.0, textwrap.fill(report, 38), va="top", ha="left", fontsize=7, family="monospace",
                       transform=text_axis.transAxes)
        panels = [("generated", generated[row])] + ([("real", real[row])] if real is not None else [])
        for column, (name, image) in enumerate(panels, start=1):
            axes[row, column].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_title(name if row == 0 else "", fontsize=9)
            axes[row, column].axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_guidance_sweep(report: str, images_by_scale: dict[float, np.ndarray], path: Path) -> Path:
    """One report, one seed: the image ``(H, W)`` at each guidance scale, left to right."""
    plt = _pyplot()
    scales = list(images_by_scale)
    figure, axes = plt.subplots(1, len(scales), figsize=(2.6 * len(scales), 3.2), squeeze=False)
    for column, scale in enumerate(scales):
        axes[0, column].imshow(images_by_scale[scale], cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"guidance {scale:g}", fontsize=9)
        axes[0, column].axis("off")
    figure.suptitle(textwrap.shorten(report, 110), fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
