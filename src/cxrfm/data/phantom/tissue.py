"""Soft tissue and bone: their density contributions (1 = the full soft tissue of the trunk).

Body wall with neck, shoulders and arms, breasts, hila and the gastric bubble
(:func:`smooth_density`, smooth enough for the coarse grid); posterior and anterior ribs, spine,
clavicles, scapulae, humeral heads and the air of the trachea and main bronchi
(:func:`bone_density`, each drawn inside its own window).
"""

from __future__ import annotations

import numpy as np

from cxrfm.data.phantom.anatomy import Anatomy, Side, dome_y, lateral_wall
from cxrfm.data.phantom.config import PhantomConfig
from cxrfm.data.phantom.geometry import Grid, add_in_window, capsule, ramp, smoothstep, tube


# --------------------------------------------------------------------------------------------
# Soft tissue
# --------------------------------------------------------------------------------------------


def body_thickness(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft tissue thickness in [0, ~1.1]: trunk (an elliptic cylinder), neck, shoulders, arms."""
    ax = np.abs(x)
    width = anatomy.body_width * (1 + 0.03 * y)
    # The trapezius slopes from the neck down to the shoulders.
    top = anatomy.shoulder_y - 0.1 + 0.2 * smoothstep(0.12, 0.95, ax)
    trunk = ramp(1 - (x / width) ** 2) ** 0.7 * smoothstep(-0.03, 0.1, y - top)
    neck = 0.65 * np.sqrt(ramp(1 - (x / 0.27) ** 2))
    arm = ramp(1 - ((ax - anatomy.body_width - 0.1) / 0.26) ** 2)
    arm *= smoothstep(0.05, 0.25, y - anatomy.shoulder_y)
    shoulder = ramp(1 - ((ax - 0.95) / 0.28) ** 2 - ((y - anatomy.shoulder_y - 0.2) / 0.22) ** 2)
    # The arm covers the trunk's edge, so there is no seam; the deltoid caps it at the shoulder.
    body = np.maximum(np.maximum(trunk, neck), np.maximum(0.45 * shoulder, 0.4 * arm))
    # Pectoral muscles and axillary folds make the upper lateral chest denser.
    pectoral = smoothstep(-0.2, -0.7, y) * ramp((ax - 0.3) / 0.45) * trunk
    return body + 0.12 * pectoral


def breasts(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for sign in (-1.0, 1.0):
        cx, cy, a, b = sign * 0.52, 0.3, 0.38, 0.28
        dome = np.sqrt(ramp(1 - ((x - cx) / a) ** 2 - ((y - cy) / b) ** 2))
        out += dome * smoothstep(cy - b, cy + 0.4 * b, y)
    return 0.12 * out


def smooth_density(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue, breasts, gastric bubble and hila (smooth, drawn on the coarse grid).

    Returns the density and the body thickness alone (lungs replace a fraction of it).
    """
    body = body_thickness(anatomy, x, y)
    density = body.copy()
    if anatomy.stomach_bubble is not None:
        bx, depth, radius = anatomy.stomach_bubble
        by = float(dome_y(anatomy.left, np.float32(bx))) + depth
        bubble = np.sqrt(ramp(1 - ((x - bx) / (1.5 * radius)) ** 2 - ((y - by) / radius) ** 2))
        density -= 0.2 * bubble * smoothstep(0.01, -0.01, y - by - 0.35 * radius)  # air above a fluid level
    if anatomy.breasts:
        density += breasts(anatomy, x, y)
    for side in (anatomy.right, anatomy.left):
        hx, hy = side.sign * (side.hilum[0] + 0.02), side.hilum[1] + 0.02
        density += 0.1 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * 0.05**2))
    return density, body


# --------------------------------------------------------------------------------------------
# Bone and airways
# --------------------------------------------------------------------------------------------


def _rib_phase(s: np.ndarray, start: float, spacing: float, growth: float) -> np.ndarray:
    """Rib number (fractional) along ``s``; spacing grows by ``growth`` per unit downward."""
    return np.log(np.clip(1 + growth * (s - start), 0.05, None)) / (growth * spacing)


def _rib_bands(phase: np.ndarray, width: np.ndarray | float, count: int, inner: float) -> np.ndarray:
    # Real ribs are not evenly spaced: warp the rib number smoothly.
    phase = phase + 0.07 * np.sin(2.3 * phase + count)
    index = np.floor(phase)
    frac = phase - index
    u = 2 * frac / width - 1
    return tube(u, inner=inner) * ((index >= 0) & (index < count))


def ribs(anatomy: Anatomy, side: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Posterior ribs (convex-up arcs from the spine) and fainter anterior ribs (sloping down medially)."""
    xs = side.sign * x
    t = xs / (side.wall_x + 0.05)
    start = min(anatomy.right.apex_y, anatomy.left.apex_y) - 0.2 + anatomy.rib_offset * (side.sign > 0)
    # Upper ribs are more curved than lower ones.
    curvature = 0.95 - 0.35 * ramp((y + 0.6) / 1.2)
    t_pos = np.clip(t, 0, None)
    s_posterior = y - curvature * (-0.45 * t + 0.95 * t_pos * t_pos * np.sqrt(t_pos))
    phase = _rib_phase(s_posterior, start, anatomy.rib_spacing, anatomy.rib_growth)
    posterior = _rib_bands(phase, 0.3 + 0.14 * ramp(t), 12, inner=0.8)
    posterior *= smoothstep(0.05, 0.15, t) * (1 - smoothstep(1.0, 1.14, t))
    s_anterior = y + 0.34 * t - 0.12 * t * t
    phase = _rib_phase(s_anterior, start + 0.22, anatomy.rib_spacing * 0.85, anatomy.rib_growth)
    anterior = _rib_bands(phase, 0.5, 7, inner=0.8)
    anterior *= smoothstep(0.24, 0.32, t) * (1 - smoothstep(0.92, 1.06, t))
    # The rib cage: just outside the lateral lung edge, from the first rib to the costal margin.
    cage = ramp((lateral_wall(side, y) + 0.07 - xs) / 0.04) * smoothstep(side.apex_y - 0.16, side.apex_y - 0.08, y)
    cage *= 1 - 0.9 * smoothstep(side.dome_y - 0.05, side.angle_y + 0.15, y)
    return (0.08 * posterior + 0.06 * anterior) * cage


def spine(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertebral bodies with end plates, pedicles and spinous processes, and the discs between."""
    half_width = 0.06 + 0.022 * ramp((y + 0.8) / 1.6)
    u = (x - 0.3 * anatomy.trachea_x) / half_width
    start = min(anatomy.right.apex_y, anatomy.left.apex_y) - 0.2
    phase = _rib_phase(y, start - 0.05, anatomy.rib_spacing, anatomy.rib_growth)
    v = (phase - np.floor(phase) - 0.53) / 0.45
    u2, v2 = u * u, v * v
    radius = np.sqrt(np.sqrt(u2 * u2 + v2 * v2))  # a rounded square
    body = ramp((1 - radius) / 0.15)
    rim = np.exp(-(((radius - 0.93) / 0.08) ** 2))
    pedicles = np.zeros_like(x)
    for centre in (-0.68, 0.68):
        r = np.sqrt(((u - centre) / 0.2) ** 2 + ((v + 0.35) / 0.3) ** 2)
        pedicles += np.exp(-(((r - 0.85) / 0.25) ** 2))
    spinous = np.exp(-((u / 0.14) ** 2 + ((v - 0.45) / 0.3) ** 2))
    column = ramp(1.3 - np.abs(u) / 1.1)
    return 0.1 * column + 0.035 * body + 0.025 * rim + 0.03 * pedicles + 0.02 * spinous


def clavicle(anatomy: Anatomy, side: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xs = side.sign * x
    tau = (xs - 0.09) / 0.68
    tau_clipped = np.clip(tau, 0, 1.1)
    centre = -0.64 - 0.1 * tau_clipped * np.sqrt(tau_clipped) + 0.025 * np.sin(np.pi * np.clip(tau, 0, 1))
    half = 0.05 * (1 - 0.3 * ramp(tau)) + 0.012 * np.exp(-((tau / 0.08) ** 2))
    ends = smoothstep(-0.04, 0.02, tau) * (1 - smoothstep(0.98, 1.05, tau))
    return 0.26 * tube((y - centre) / half, inner=0.78) * ends


def scapula(anatomy: Anatomy, side: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The scapula projects over the upper lateral chest; its medial border is a faint line."""
    xs = side.sign * x
    border = 0.6 + 0.16 * ramp((y + 0.8) / 0.75)
    phi = np.maximum(border - xs, (y + 0.06) + 0.7 * (xs - 0.78))
    phi = np.maximum(phi, anatomy.shoulder_y + 0.08 - y)
    phi = np.maximum(phi, xs - anatomy.body_width + 0.04)
    plate = ramp(-phi / 0.04)
    edge = np.exp(-((phi / 0.008) ** 2))
    return 0.06 * plate + 0.03 * edge


def humerus(anatomy: Anatomy, side: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xs = side.sign * x
    cx, cy, radius = anatomy.body_width + 0.02, anatomy.shoulder_y + 0.2, 0.13
    r = np.sqrt((xs - cx) ** 2 + (y - cy) ** 2) / radius
    head = np.sqrt(ramp(1 - r * r)) * 0.7 + np.exp(-(((r - 0.95) / 0.1) ** 2)) * 0.3
    return 0.07 * head


def airways(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trachea down to the carina and the two main bronchi (air: negative density)."""
    carina = (anatomy.trachea_x, -0.3)
    centre = anatomy.trachea_x - 0.015 * np.exp(-(((y + 0.34) / 0.1) ** 2))
    trachea = np.sqrt(ramp(1 - ((x - centre) / 0.033) ** 2)) * (1 - smoothstep(-0.33, -0.29, y))
    right = capsule(x, y, carina, (0.6 * -anatomy.right.hilum[0], 0.5 * (anatomy.right.hilum[1] - 0.3)), 0.022)
    left = capsule(x, y, carina, (0.6 * anatomy.left.hilum[0], 0.5 * (anatomy.left.hilum[1] - 0.3) + 0.02), 0.02)
    return -(0.25 * trachea + 0.1 * np.maximum(right, left))


def bone_density(config: PhantomConfig, anatomy: Anatomy, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Bones and airways at full resolution, each drawn only inside its own window.

    Returns the density and, separately, the ribs, whose visibility depends on the lungs behind them.
    """
    density = np.zeros_like(grid.x)
    rib_field = np.zeros_like(grid.x)
    top, bottom = grid.bounds[2], grid.bounds[3]
    for side in (anatomy.right, anatomy.left):
        lo, hi = sorted((0.0, side.sign * (side.wall_x + 0.15)))
        box = (lo, hi, side.apex_y - 0.2, side.angle_y + 0.4)
        add_in_window(rib_field, grid, box, lambda a, b, s=side: ribs(anatomy, s, a, b))
        lo, hi = sorted((side.sign * 0.05, side.sign * 0.9))
        add_in_window(density, grid, (lo, hi, -1.0, -0.45), lambda a, b, s=side: clavicle(anatomy, s, a, b))
        lo, hi = sorted((side.sign * 0.5, side.sign * 1.3))
        add_in_window(density, grid, (lo, hi, anatomy.shoulder_y, 0.05), lambda a, b, s=side: scapula(anatomy, s, a, b))
        add_in_window(density, grid, (lo, hi, anatomy.shoulder_y, 0.0), lambda a, b, s=side: humerus(anatomy, s, a, b))
    add_in_window(density, grid, (-0.13, 0.13, top, bottom), lambda a, b: spine(anatomy, a, b))
    add_in_window(density, grid, (-0.3, 0.3, top, 0.0), lambda a, b: airways(anatomy, a, b))
    return density, config.rib_contrast * rib_field
