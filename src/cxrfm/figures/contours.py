"""Figures of the chest region: lung contour on the image, and the per-patch inside fraction next to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrfm.utils.patch_grid import patch_inside_fraction


def _as_batch(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(1, H, W)`` or ``(B, 1, H, W)`` -> ``(B, H, W)`` float32 NumPy."""
    array = torch.as_tensor(array).detach().float().cpu()
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"expected (B, 1, H, W), (1, H, W) or (H, W), got shape {tuple(array.shape)}")
    return array[:, 0].numpy()


def save_contour_overlays(
    images: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    path: str | Path,
    patch_size: int | tuple[int, int] | None = None,
    inside_threshold: float = 0.5,
    titles: list[str] | None = None,
    panel_inches: float = 3.5,
) -> Path:
    """Write a PNG with one row per image.

    Column 1: the image with the mask's contour (red). Column 2 (when ``patch_size`` is given):
    the image under the patch grid, each patch tinted by its inside fraction (0 = none, 1 = all
    inside); patches with fraction >= ``inside_threshold`` are outlined, and the title gives how
    many patches count as inside. Image sizes must be divisible by ``patch_size``.

    Args:
        images: ``(B, 1, H, W)`` (or one ``(H, W)``) in ``[0, 1]``.
        masks: the same shape, {0, 1} (or soft).
    """
    images, masks = _as_batch(images), _as_batch(masks)
    if images.shape != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} differ in shape")
    columns = 1 if patch_size is None else 2
    height, width = images.shape[-2:]
    aspect = height / width
    figure = Figure(figsize=(panel_inches * columns, panel_inches * aspect * len(images) + 0.3 * len(images)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(images), columns, squeeze=False)
    for row, (image, mask) in enumerate(zip(images, masks)):
        _draw_contour(axes[row, 0], image, mask, titles[row] if titles else None)
        if patch_size is not None:
            _draw_patch_grid(axes[row, 1], image, mask, patch_size, inside_threshold)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _draw_contour(axis, image: np.ndarray, mask: np.ndarray, title: str | None) -> None:
    axis.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if mask.max() > 0.5 and mask.min() < 0.5:
        axis.contour(mask, levels=[0.5], colors="red", linewidths=1.2)
    axis.set_title(title or f"lung fraction {float((mask > 0.5).mean()):.2f}", fontsize=9)
    axis.set_axis_off()


def _draw_patch_grid(axis, image: np.ndarray, mask: np.ndarray, patch_size, inside_threshold: float) -> None:
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    height, width = image.shape
    grid = (height // patch[0], width // patch[1])
    fractions = patch_inside_fraction(torch.from_numpy(mask), patch).view(*grid).numpy()
    axis.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    # extent maps the (grid) fraction image onto pixel coordinates so patches line up with the image.
    axis.imshow(fractions, cmap="viridis", vmin=0, vmax=1, alpha=0.45, interpolation="nearest",
                extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    for row, column in zip(*np.nonzero(fractions >= inside_threshold)):
        axis.add_patch(_rectangle(column * patch[1] - 0.5, row * patch[0] - 0.5, patch[1], patch[0]))
    for line in range(1, grid[0]):
        axis.axhline(line * patch[0] - 0.5, color="white", linewidth=0.3, alpha=0.6)
    for line in range(1, grid[1]):
        axis.axvline(line * patch[1] - 0.5, color="white", linewidth=0.3, alpha=0.6)
    inside = int((fractions >= inside_threshold).sum())
    axis.set_title(f"{inside}/{fractions.size} patches inside (>= {inside_threshold:g})", fontsize=9)
    axis.set_axis_off()


def _rectangle(x: float, y: float, width: float, height: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), width, height, fill=False, edgecolor="orange", linewidth=0.8)
