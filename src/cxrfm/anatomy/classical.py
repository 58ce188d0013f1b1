"""A lung-field mask without learned weights: the fallback when no segmenter is available.

Idea: the lungs are the two large dark regions inside the chest. A global threshold cannot find
them reliably (the soft tissue of the chest wall is as dark as the lung bases), so each lung is
grown by raising the threshold step by step and keeping the last mask before it "leaks": touches
the top / left / right border (outside air, neck, arm pits), crosses the midline, or grows past a
third of the image. Each lung is then replaced by its convex hull (lungs are nearly convex apart
from the heart notch; the hull recovers the bright bases that thresholding misses), and the union
is closed and hole-filled. Works on a copy downscaled to a long side of ``work_size`` pixels.

Measured Dice on OpenIST test is in BENCHMARKS (about 0.84, vs 0.97+ for the U-Net): use it when
no weights exist, not as a replacement for the segmenter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from cxrfm.io.image import resize_image, resize_mask


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _normalise(image: np.ndarray, work_size: int) -> np.ndarray:
    """Downscale, stretch the 1st-99th percentile to [0, 1], smooth (ribs and noise)."""
    height, width = image.shape
    scale = work_size / max(height, width)
    small = resize_image(image, (max(8, round(height * scale)), max(8, round(width * scale))), mode="stretch")
    low, high = np.percentile(small, [1, 99])
    small = np.clip((small - low) / max(high - low, 1e-6), 0, 1)
    return ndimage.gaussian_filter(small, 1.5)


def _has_leaked(component: np.ndarray, side: int) -> bool:
    """Touches the top / left / right border, crosses the midline, or covers over a third of the image."""
    height, width = component.shape
    rows, columns = np.nonzero(component)
    touches_border = rows.min() == 0 or columns.min() == 0 or columns.max() == width - 1
    crosses_midline = columns.max() > 0.55 * width if side == 0 else columns.min() < 0.45 * width
    return touches_border or crosses_midline or len(rows) > 0.35 * height * width


def _seed_lung(labels: np.ndarray, count: int, side: int) -> np.ndarray | None:
    """The largest dark component on the given image half (0 = left) that has not leaked, else None."""
    height, width = labels.shape
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    centres = ndimage.center_of_mass(labels > 0, labels, range(1, count + 1))
    candidates = [
        index + 1
        for index, (row, column) in enumerate(centres)
        if (column < width / 2) == (side == 0)
        and 0.15 * height < row < 0.85 * height
        and sizes[index + 1] > 0.01 * height * width
    ]
    for label in sorted(candidates, key=lambda label: -sizes[label]):
        component = labels == label
        if not _has_leaked(component, side):
            return component
    return None


def _boundary_contrast(smooth: np.ndarray, component: np.ndarray, width: int = 3) -> float:
    """Mean brightness of a ``width``-pixel ring outside the component minus the mean inside it."""
    ring = ndimage.binary_dilation(component, _disk(width)) & ~component
    return float(smooth[ring].mean() - smooth[component].mean())


def _grow_lung(smooth: np.ndarray, thresholds: np.ndarray, side: int, opening: int) -> np.ndarray | None:
    """Follow the lung's component as the threshold rises until it leaks; return the step whose
    boundary separates dark inside from bright outside best (the lung edge, not a blur ramp)."""
    lung, best, best_contrast = None, None, -np.inf
    for threshold in thresholds:
        dark = ndimage.binary_opening(smooth < threshold, _disk(opening))
        labels, count = ndimage.label(dark)
        if count == 0:
            continue
        if lung is None:
            lung = _seed_lung(labels, count, side)
        else:
            # The lung at this threshold is the component covering most of it at the previous one.
            overlap = np.bincount(labels[lung], minlength=count + 1)
            overlap[0] = 0
            if overlap.max() == 0:
                continue
            grown = labels == overlap.argmax()
            if _has_leaked(grown, side):
                break
            lung = grown
        if lung is not None:
            contrast = _boundary_contrast(smooth, lung)
            if contrast >= best_contrast:
                best, best_contrast = lung, contrast
    return best


def classical_lung_mask(
    image: np.ndarray, work_size: int = 256, opening: int = 3, closing: int = 3, num_thresholds: int = 31
) -> np.ndarray:
    """Lung-field mask of a frontal CXR by thresholding, no weights needed.

    Args:
        image: ``(H, W)`` float in ``[0, 1]`` (0 = black), a frontal view.
        work_size: long side of the working copy in pixels.
        opening: radius (working pixels) of the opening that cuts thin dark bridges to the outside.
        closing: radius of the final closing.
        num_thresholds: threshold steps between the 5th and 80th percentile of the central region.
    Returns:
        ``(H, W)`` float32 mask in ``{0, 1}``; all zeros when no lung-like region is found.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {image.shape}")
    smooth = _normalise(image, work_size)
    height, width = smooth.shape
    centre = smooth[int(0.1 * height) : int(0.9 * height), int(0.1 * width) : int(0.9 * width)]
    thresholds = np.quantile(centre, np.linspace(0.05, 0.8, num_thresholds))
    mask = np.zeros(smooth.shape, dtype=bool)
    for side in (0, 1):
        lung = _grow_lung(smooth, thresholds, side, opening)
        if lung is not None:
            mask |= convex_hull_image(lung)
    if closing > 0:
        mask = ndimage.binary_closing(mask, _disk(closing))
    mask = ndimage.binary_fill_holes(mask)
    return resize_mask(mask.astype(np.float32), image.shape, mode="stretch")
