"""Binary-mask clean-up shared by the segmenter and the classical fallback (NumPy + scipy.ndimage)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_components(mask: np.ndarray, count: int = 2, min_fraction: float = 0.0) -> np.ndarray:
    """Keep the ``count`` largest 8-connected components of a binary ``(H, W)`` mask.

    Components smaller than ``min_fraction`` of the largest one are dropped too (a stray blob
    should not count as "the second lung"). ``count <= 0`` keeps every component.
    """
    mask = np.asarray(mask) > 0
    if count <= 0 or not mask.any():
        return mask
    labels, num = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if num <= count and min_fraction <= 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    keep = [index + 1 for index in order if sizes[index] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes (vessels, nodules predicted as background) of a binary ``(H, W)`` mask."""
    return ndimage.binary_fill_holes(np.asarray(mask) > 0)


def clean_lung_mask(mask: np.ndarray, keep_largest: int = 2) -> np.ndarray:
    """Largest components kept, holes filled; returns float32 ``{0, 1}`` of the same shape."""
    cleaned = keep_largest_components(mask, keep_largest)
    return fill_holes(cleaned).astype(np.float32)
