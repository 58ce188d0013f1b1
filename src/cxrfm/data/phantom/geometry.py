"""Anatomical coordinates, shape primitives and the canvas a case is drawn on.

:class:`Grid` maps every pixel to anatomical coordinates (``x`` to the image right = the patient's
left, ``y`` downward; one unit is half the short image side at scale 1) and back. The primitives
(:func:`ramp`, :func:`smoothstep`, :func:`inside`, :func:`tube`, :func:`ellipse_phi`,
:func:`smooth_min`, :func:`capsule`) build distance-like fields ("phi", negative inside) and
projected thickness profiles from them. :func:`add_in_window` draws a field only inside the pixels
of an anatomical box; :class:`Drawing` holds the density and masks of a case while it is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------


@dataclass
class Grid:
    """Anatomical coordinates of every pixel, and the map back to pixels.

    ``x``, ``y``: ``(H, W)`` float32. ``unit``: anatomical units per pixel (for anti-aliasing).
    """

    x: np.ndarray
    y: np.ndarray
    unit: float
    size: tuple[int, int]
    half_side: float
    scale: float
    angle: float
    shift: tuple[float, float]
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x0, x1, y0, y1 of the image

    @classmethod
    def build(cls, size: tuple[int, int], scale: float, angle: float, shift: tuple[float, float]) -> "Grid":
        height, width = size
        half_side = min(height, width) / 2
        cols = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / half_side - shift[0]
        rows = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / half_side - shift[1]
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        # Rotate and scale the image plane into the patient's frame.
        x = cos * cols[None, :] + sin * rows[:, None]
        y = -sin * cols[None, :] + cos * rows[:, None]
        corners_x, corners_y = x[[0, 0, -1, -1], [0, -1, 0, -1]], y[[0, 0, -1, -1], [0, -1, 0, -1]]
        bounds = (float(corners_x.min()), float(corners_x.max()), float(corners_y.min()), float(corners_y.max()))
        return cls(x.astype(np.float32), y.astype(np.float32), 1 / (half_side * scale), size,
                   half_side, scale, angle, shift, bounds)

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical ``(x, y)`` -> pixel ``(row, col)`` (float, pixel centres at integers)."""
        height, width = self.size
        cos, sin = math.cos(self.angle) * self.scale, math.sin(self.angle) * self.scale
        cols = (cos * x - sin * y + self.shift[0]) * self.half_side
        rows = (sin * x + cos * y + self.shift[1]) * self.half_side
        return rows + height / 2 - 0.5, cols + width / 2 - 0.5

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """The pixel rows/cols covering the anatomical box ``[x0, x1] x [y0, y1]``."""
        corners_x = np.array([x0, x1, x0, x1])
        corners_y = np.array([y0, y0, y1, y1])
        rows, cols = self.to_pixels(corners_x, corners_y)
        height, width = self.size
        r0, r1 = max(0, int(rows.min()) - 1), min(height, int(math.ceil(rows.max())) + 2)
        c0, c1 = max(0, int(cols.min()) - 1), min(width, int(math.ceil(cols.max())) + 2)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def add_in_window(target: np.ndarray, grid: Grid, box: tuple[float, float, float, float], draw) -> None:
    rows, cols = grid.window(*box)
    if rows.stop > rows.start and cols.stop > cols.start:
        target[rows, cols] += draw(grid.x[rows, cols], grid.y[rows, cols])


# --------------------------------------------------------------------------------------------
# Shape primitives
# --------------------------------------------------------------------------------------------


def ramp(value: np.ndarray) -> np.ndarray:
    return np.clip(value, 0.0, 1.0)


def smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    t = ramp((value - edge0) / (edge1 - edge0))
    return t * t * (3 - 2 * t)


def inside(phi: np.ndarray, unit: float) -> np.ndarray:
    """Anti-aliased indicator of ``phi < 0`` (``phi`` in anatomical units, about a distance)."""
    return ramp(0.5 - phi / unit)


def tube(u: np.ndarray, inner: float = 0.72, marrow: float = 0.35) -> np.ndarray:
    """Projected thickness across a bone of cortex + marrow; ``u`` in [-1, 1] across it.

    A hollow cylinder seen side-on is brightest near its edges, which is what makes ribs and
    clavicles look like bone rather than flat bands.
    """
    outer = np.sqrt(ramp(1 - u * u))
    core = np.sqrt(np.clip(inner * inner - u * u, 0.0, None))
    return ((outer - core) + marrow * core) / math.sqrt(1 - inner * inner)


def ellipse_phi(x, y, cx, cy, a, b, angle=0.0):
    """Approximate signed distance to a rotated ellipse (negative inside)."""
    cos, sin = math.cos(angle), math.sin(angle)
    u = (x - cx) * cos + (y - cy) * sin
    v = -(x - cx) * sin + (y - cy) * cos
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * min(a, b)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two shapes with a rounded join of size ``k`` (polynomial smooth minimum)."""
    h = ramp(0.5 + 0.5 * (b - a) / k)
    return b + (a - b) * h - k * h * (1 - h)


def capsule(x, y, p0, p1, radius):
    """Projected thickness profile of a tube from ``p0`` to ``p1`` (1 on its axis)."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = ramp(((x - p0[0]) * dx + (y - p0[1]) * dy) / (dx * dx + dy * dy))
    distance = np.sqrt((x - p0[0] - t * dx) ** 2 + (y - p0[1] - t * dy) ** 2)
    return np.sqrt(ramp(1 - (distance / radius) ** 2))


# --------------------------------------------------------------------------------------------
# Canvas
# --------------------------------------------------------------------------------------------


@dataclass
class Drawing:
    """Density and masks of one case while it is being drawn."""

    density: np.ndarray
    lung_mask: np.ndarray
    markings: np.ndarray  # where vascular markings are visible (aerated, uncollapsed lung)
    meta: dict[str, dict[str, Any]]
