"""The anatomy of one seed and the analytic shapes of the thoracic cavity.

:func:`sample_anatomy` draws the per-seed parameters (:class:`Anatomy`, one :class:`Side` per
hemithorax: apex, lateral wall, costophrenic angle, dome, hilum; heart, mediastinum, ribs, body,
display). The shape functions turn them into distance-like fields (negative inside): the lungs
(:func:`lung_phi`), the heart (:func:`heart_phi`), the thoracic cavity (:func:`chest_phi`), with
:func:`dome_y` and :func:`lateral_wall` for the hemidiaphragms and chest walls, and the anatomical
boxes they fit in. Sides are the patient's: the patient's right is ``x < 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrfm.data.phantom.config import PhantomConfig
from cxrfm.data.phantom.geometry import ellipse_phi, ramp, smooth_min


# --------------------------------------------------------------------------------------------
# Anatomy parameters
# --------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One hemithorax; lengths in anatomical units, measured outward from the midline."""

    sign: float            # -1 patient right (image left), +1 patient left
    apex_x: float           # lung apex
    apex_y: float
    wall_x: float           # lateral chest wall (inner) at the costophrenic angle
    angle_y: float          # costophrenic angle
    dome_x: float           # top of the hemidiaphragm
    dome_y: float
    hilum: tuple[float, float]


@dataclass
class Anatomy:
    right: Side
    left: Side
    heart_center: tuple[float, float]
    heart_axes: tuple[float, float]
    heart_angle: float
    atrium: tuple[float, float, float, float]
    ctr: float
    mediastinum_width: float
    aortic_knob: float
    trachea_x: float
    rib_spacing: float
    rib_growth: float
    rib_offset: float
    body_width: float
    shoulder_y: float
    breasts: bool
    stomach_bubble: tuple[float, float, float] | None
    gain: float
    gamma: float
    contrast: float
    lung_air: float

    def side(self, name: str) -> Side:
        return self.right if name == "right" else self.left


def sample_anatomy(rng: np.random.Generator, config: PhantomConfig, ctr: float) -> Anatomy:
    u = rng.uniform
    apex_y = u(-0.76, -0.68)
    right = Side(-1.0, u(0.30, 0.36), apex_y, u(0.78, 0.84), u(0.58, 0.66), u(0.30, 0.40),
                  u(0.26, 0.34), (u(0.15, 0.19), u(-0.12, -0.06)))
    left = Side(1.0, u(0.30, 0.36), apex_y + u(-0.02, 0.03), right.wall_x + u(-0.03, 0.01),
                 right.angle_y + u(0.02, 0.06), u(0.34, 0.44), right.dome_y + u(0.04, 0.08),
                 (u(0.15, 0.19), u(-0.18, -0.12)))
    thorax_width = right.wall_x + left.wall_x
    # Heart: the ventricles as an ellipse tilted down to the patient's left plus the right atrium
    # forming the right border; together they span ctr * thorax width.
    angle = math.radians(u(30, 40))
    b_over_a = u(0.66, 0.76)
    half_extent = math.sqrt(math.cos(angle) ** 2 + (b_over_a * math.sin(angle)) ** 2)
    heart_width = ctr * thorax_width
    a = 0.86 * heart_width / (2 * half_extent)
    # An enlarging heart grows to both sides (about half of the extra width to the right).
    right_border = -u(0.15, 0.19) - 0.5 * max(0.0, ctr - 0.45) * thorax_width
    center_x = right_border + heart_width - a * half_extent
    center_y = u(0.19, 0.24) + 0.3 * max(0.0, ctr - 0.47)
    atrium = (right_border + 0.09, center_y - u(0.02, 0.06), 0.09, 0.2)
    bubble = None
    if rng.random() < config.stomach_bubble_probability:
        bubble = (u(0.3, 0.5), u(0.06, 0.12), u(0.05, 0.09))  # x, depth below dome, radius
    return Anatomy(
        right=right,
        left=left,
        heart_center=(center_x, center_y),
        heart_axes=(a, a * b_over_a),
        heart_angle=angle,
        atrium=atrium,
        ctr=ctr,
        mediastinum_width=u(0.09, 0.115),
        aortic_knob=u(0.035, 0.06),
        trachea_x=u(-0.02, 0.01),
        rib_spacing=u(0.115, 0.13),
        rib_growth=u(0.18, 0.28),
        rib_offset=u(-0.02, 0.02),
        body_width=u(0.93, 1.0),
        shoulder_y=u(-0.88, -0.8),
        breasts=bool(rng.random() < config.breast_probability),
        stomach_bubble=bubble,
        gain=u(1.45, 1.6),
        gamma=u(*config.gamma_range),
        contrast=u(*config.contrast_range),
        lung_air=u(0.84, 0.9),
    )


# --------------------------------------------------------------------------------------------
# Shapes: lungs, heart, chest
# --------------------------------------------------------------------------------------------


def dome_y(side: Side, xs: np.ndarray) -> np.ndarray:
    """Hemidiaphragm height under lateral position ``xs``; meets the chest wall at the angle."""
    depth = side.angle_y - 0.015 - side.dome_y
    lateral = np.clip((xs - side.dome_x) / (side.wall_x - side.dome_x), 0, None)
    medial = np.clip((side.dome_x - xs) / side.dome_x, 0, None)
    return side.dome_y + depth * lateral * lateral + 0.12 * medial * medial


def lateral_wall(side: Side, y: np.ndarray) -> np.ndarray:
    """Lateral lung edge at height ``y``: a rounded apex widening to a near-vertical wall.

    A superellipse quadrant ``sqrt(1 - (1 - t)^2.5)`` (written without a fractional power, which
    is slow on large arrays).
    """
    t = ramp((y - side.apex_y) / (side.angle_y - side.apex_y))
    u = 1 - t
    return side.apex_x + (side.wall_x - side.apex_x) * np.sqrt(1 - u * u * np.sqrt(u))


def _envelope(side: Side, xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance-like field of the hemithorax (apex, lateral wall, medial line), negative inside."""
    u = 1 - ramp((y - side.apex_y) / (side.angle_y - side.apex_y))
    lateral = lateral_wall(side, y)
    medial = side.apex_x - (side.apex_x + 0.02) * np.sqrt(1 - u * u * u)
    return np.maximum(np.maximum(xs - lateral, medial - xs), side.apex_y - y)


def _mediastinum_edge(anatomy: Anatomy, side: Side, y: np.ndarray) -> np.ndarray:
    """Lateral edge of the upper mediastinum on one side (trachea, SVC, aortic knob)."""
    width = anatomy.mediastinum_width + 0.03 * ramp((y + 0.7) / 0.6)
    # Below the heart's centre the heart itself is the border; widen the mediastinum there so
    # no sliver of lung is left between the heart and the diaphragm.
    below_heart = ramp((y - anatomy.heart_center[1]) / 0.12)
    if side.sign > 0:
        knob = anatomy.aortic_knob * np.exp(-(((y + 0.34) / 0.07) ** 2))
        trunk = 0.025 * np.exp(-(((y + 0.17) / 0.06) ** 2))
        return width + knob + trunk + 0.15 * below_heart
    return width + 0.015 * np.exp(-(((y + 0.05) / 0.12) ** 2)) + 0.03 * below_heart


def heart_phi(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy = anatomy.heart_center
    a, b = anatomy.heart_axes
    ventricles = ellipse_phi(x, y, cx, cy, a, b, anatomy.heart_angle)
    atrium = ellipse_phi(x, y, *anatomy.atrium)
    return smooth_min(ventricles, atrium, 0.04)


def lung_phi(anatomy: Anatomy, side: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance-like field of one lung (negative inside)."""
    xs = side.sign * x
    dome = dome_y(side, xs)
    phi = _envelope(side, xs, y)
    phi = np.maximum(phi, (y - dome) * 0.8)
    # Mediastinum and heart: joined smoothly on the right (one convex border from the SVC to the
    # right atrium), sharply on the left (aortic knob, cardiac waist, left ventricle).
    mediastinum = xs - _mediastinum_edge(anatomy, side, y)
    blend = 0.07 if side.sign < 0 else 0.015
    return np.maximum(phi, -smooth_min(mediastinum, heart_phi(anatomy, x, y), blend))


def chest_box(anatomy: Anatomy) -> tuple[float, float, float, float]:
    top = min(anatomy.right.apex_y, anatomy.left.apex_y) - 0.02
    bottom = max(anatomy.right.angle_y, anatomy.left.angle_y) + 0.02
    return -anatomy.right.wall_x - 0.03, anatomy.left.wall_x + 0.03, top, bottom


def heart_box(anatomy: Anatomy) -> tuple[float, float, float, float]:
    cx, cy = anatomy.heart_center
    reach = max(anatomy.heart_axes) + 0.02
    return anatomy.atrium[0] - anatomy.atrium[2] - 0.05, cx + reach, cy - reach - 0.1, cy + reach


def chest_phi(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The thoracic cavity: between the lateral walls, below the apices, above both domes."""
    parts = []
    for side in (anatomy.right, anatomy.left):
        parts.append(side.sign * x - lateral_wall(side, y))
    floor = np.minimum(dome_y(anatomy.right, -x), dome_y(anatomy.left, x))
    top = np.minimum(anatomy.right.apex_y, anatomy.left.apex_y)
    return np.maximum(np.maximum(parts[0], parts[1]), np.maximum(top - y, (y - floor) * 0.8))
