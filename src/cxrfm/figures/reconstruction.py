"""Reconstruction figures in the style of the HD-MAE paper's Fig. 8.

Rows: original, masked (what the encoder saw; removed patches grey), reconstruction (visible
patches pasted back). One column per sample. The chest/lung contour that steered the masking is
drawn on the original and the reconstruction.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_reconstruction_figure(
    path: str | Path,
    images: torch.Tensor,
    masked: torch.Tensor,
    reconstructed: torch.Tensor,
    regions: torch.Tensor | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG grid.

    Args:
        path: output ``.png``.
        images, masked, reconstructed: ``(B, 1, H, W)`` in ``[0, 1]``.
        regions: ``(B, 1, H, W)`` {0, 1} chest regions whose contour is drawn, or None.
        title: figure title (e.g. the step).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [("original", images), ("masked", masked), ("reconstruction", reconstructed)]
    columns = images.shape[0]
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows)), squeeze=False)
    for row, (label, batch) in enumerate(rows):
        pixels = batch.detach().float().cpu()
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(pixels[column, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if regions is not None and row != 1:
                _draw_contour(axis, regions[column, 0])
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(label)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw_contour(axis, region: torch.Tensor) -> None:
    region = region.detach().float().cpu()
    if torch.isnan(region).any() or region.min() == region.max():
        return  # no region, or nothing to outline
    axis.contour(region.numpy(), levels=[0.5], colors="red", linewidths=0.8)
