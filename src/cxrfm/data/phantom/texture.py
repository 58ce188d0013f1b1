"""Lung texture: the pulmonary vascular tree and parenchymal noise, drawn on the coarse grid.

:func:`vessel_density` grows a branching tree from each hilum and splats it into a density field;
:func:`noise_fields` gives smooth unit-variance noise at several scales from one random draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cxrfm.data.phantom.anatomy import Anatomy, Side
from cxrfm.data.phantom.geometry import Grid


def _vessel_segments(rng: np.random.Generator, side: Side, generations: int = 8) -> np.ndarray:
    """A monopodial branching tree from the hilum: rows ``(x0, y0, x1, y1, r0, r1)``.

    Each segment continues as a thick child near its own direction and gives off a thin side
    branch; directions are pulled outward from the hilum so that branches fan out.
    """
    hx, hy = side.sign * side.hilum[0], side.hilum[1]
    count = 11
    angle = np.radians(np.linspace(-110, 105, count) + rng.uniform(-6, 6, count))  # 0 = lateral
    x0 = hx + rng.uniform(-0.02, 0.02, count)
    y0 = hy + rng.uniform(-0.04, 0.04, count)
    length = rng.uniform(0.07, 0.1, count)
    # Lower-zone vessels are larger: blood flow follows gravity in an upright patient.
    radius = rng.uniform(0.016, 0.022, count) * (1 + 0.25 * np.sin(angle))
    out = []
    for _ in range(generations):
        x1 = x0 + length * side.sign * np.cos(angle)
        y1 = y0 + length * np.sin(angle)
        out.append(np.stack([x0, y0, x1, y1, radius, radius * 0.85], axis=1))
        n = len(x0)
        outward = np.arctan2(y1 - hy, side.sign * (x1 - hx))
        turn = rng.choice([-1.0, 1.0], n) * rng.uniform(0.45, 0.9, n)
        main_angle = angle + rng.uniform(-0.3, 0.3, n)
        side_angle = angle + turn
        angle = np.concatenate([main_angle, side_angle])
        angle = angle + 0.25 * np.angle(np.exp(1j * (np.concatenate([outward, outward]) - angle)))
        x0, y0 = np.concatenate([x1, x1]), np.concatenate([y1, y1])
        length = np.concatenate([length * rng.uniform(0.8, 0.95, n), length * rng.uniform(0.6, 0.85, n)])
        radius = np.concatenate([radius * 0.85, radius * rng.uniform(0.55, 0.7, n)])
    return np.concatenate(out)


def _splat(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear splatting of weighted points into an image."""
    height, width = shape
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = rows - r0, cols - c0
    out = np.zeros(height * width, dtype=np.float64)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        out += np.bincount(rr[ok] * width + cc[ok], weights=(weights * w)[ok], minlength=height * width)
    return out.reshape(shape).astype(np.float32)


def vessel_density(rng: np.random.Generator, anatomy: Anatomy, grid: Grid) -> np.ndarray:
    """Density of the pulmonary vessels on ``grid``."""
    shape = grid.size
    # The last generations are thinner than a pixel on small grids: skip them there.
    generations = 6 if max(shape) <= 256 else (7 if max(shape) <= 384 else 8)
    segments = np.concatenate([_vessel_segments(rng, side, generations) for side in (anatomy.right, anatomy.left)])
    pixels_per_unit = 1 / grid.unit
    step = 0.7 / pixels_per_unit  # sample every 0.7 working pixels
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    counts = np.maximum(1, np.ceil(lengths / step).astype(np.int64))
    index = np.repeat(np.arange(len(segments)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(index.size) - first + 0.5) / counts[index]
    seg = segments[index]
    x = seg[:, 0] + t * (seg[:, 2] - seg[:, 0])
    y = seg[:, 1] + t * (seg[:, 3] - seg[:, 1])
    radius_px = (seg[:, 4] + t * (seg[:, 5] - seg[:, 4])) * pixels_per_unit
    rows, cols = grid.to_pixels(x, y)
    out = np.zeros(shape, dtype=np.float32)
    # A tube of radius r has a peak projected thickness 2r; blur by a width that matches its class.
    for low, high, sigma in ((0.0, 1.2, 0.8), (1.2, 2.5, 1.6), (2.5, np.inf, 3.2)):
        chosen = (radius_px >= low) & (radius_px < high)
        if not chosen.any():
            continue
        # Exaggerated about 3x over blood-vs-air physics, as console processing does.
        weights = 3.5 * 2 * radius_px[chosen] / pixels_per_unit * math.sqrt(2 * math.pi) * sigma * 0.7
        out += ndimage.gaussian_filter(_splat(rows[chosen], cols[chosen], weights, shape), sigma, truncate=3.0)
    return out


def noise_fields(rng: np.random.Generator, shape: tuple[int, int], sigmas_px: Sequence[float]) -> list[np.ndarray]:
    """Smooth zero-mean noise of unit standard deviation at each scale (one random draw)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    fields = [ndimage.gaussian_filter(white, sigma, truncate=3.0) for sigma in sigmas_px]
    return [field / (field.std() + 1e-8) for field in fields]
