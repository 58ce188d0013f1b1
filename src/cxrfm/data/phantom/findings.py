"""Findings: which a case has, where and how large, and how they are drawn.

:func:`resolve_findings` turns forced findings and random probabilities into a plan (severity,
side, lobe). The drawing: :func:`draw_pneumothorax` (collapsed lung, pleural line, air without
markings), :func:`effusion_fluid` (dependent fluid with a meniscus) and
:func:`draw_findings_density` (consolidation / lung opacity as air replaced, nodules as added
density), with :func:`size_word` for the reports' "small / moderate / large".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cxrfm.data.labels import canonical_finding
from cxrfm.data.phantom.anatomy import Anatomy, Side, lateral_wall, lung_phi
from cxrfm.data.phantom.config import SUPPORTED_FINDINGS, UNIT_CM
from cxrfm.data.phantom.geometry import Drawing, Grid, inside, ramp, smoothstep
from cxrfm.errors import ConfigError


# --------------------------------------------------------------------------------------------
# Which, where and how large
# --------------------------------------------------------------------------------------------

LOBES: tuple[str, ...] = ("RUL", "RML", "RLL", "LUL", "LLL")
_SIDE_CHOICES = {"Pleural Effusion": ("left", "right", "bilateral"), "Pneumothorax": ("left", "right")}


def size_word(severity: float) -> str:
    return "small" if severity < 0.4 else ("moderate" if severity < 0.75 else "large")


def resolve_findings(
    findings: Mapping[str, float | Mapping[str, Any]] | None,
    finding_probs: Mapping[str, float] | None,
    rng: np.random.Generator,
) -> dict[str, dict[str, Any]]:
    """Decide which findings a case has, with severity and side / lobe.

    ``findings`` forces findings: ``{"Pleural Effusion": 0.6}`` or
    ``{"Pleural Effusion": {"severity": 0.6, "side": "left"}}``; severity 0 forces a finding
    *absent*. ``finding_probs`` draws the remaining ones at random (severity uniform in
    [0.25, 1]). Names are canonicalised (``"Effusion"`` works).

    Raises:
        ConfigError: a finding the phantom cannot draw, a severity outside [0, 1], a bad option.
    """
    forced = canonical_finding_keys(findings or {}, "findings")
    probs = canonical_finding_keys(finding_probs or {}, "finding_probs")
    plan: dict[str, dict[str, Any]] = {}
    # Draw every random number in a fixed order, so forcing one finding leaves the others alone.
    for name in SUPPORTED_FINDINGS:
        draw, severity = rng.random(), rng.uniform(0.25, 1.0)
        side_draw, lobe_draw = rng.integers(0, 1 << 30), rng.integers(0, 1 << 30)
        if name in forced:
            options = _finding_options(name, forced[name])
        elif name in probs and draw < float(probs[name]):
            options = {"severity": severity}
        else:
            continue
        if options["severity"] <= 0:
            continue
        if name in _SIDE_CHOICES and "side" not in options:
            choices = _SIDE_CHOICES[name]
            options["side"] = choices[side_draw % len(choices)]
        if name in ("Consolidation", "Lung Opacity", "Nodule") and "lobe" not in options:
            options["lobe"] = LOBES[lobe_draw % len(LOBES)]
        plan[name] = options
    return plan


def canonical_finding_keys(mapping: Mapping[str, Any], field_name: str) -> dict[str, Any]:
    out = {}
    for name, value in mapping.items():
        canonical = canonical_finding(str(name))
        if canonical not in SUPPORTED_FINDINGS:
            raise ConfigError(f"{field_name}.{name}", f"the phantom cannot draw this; it draws {list(SUPPORTED_FINDINGS)}", "phantom")
        out[canonical] = value
    return out


def _finding_options(name: str, value: float | Mapping[str, Any]) -> dict[str, Any]:
    options = dict(value) if isinstance(value, Mapping) else {"severity": value}
    unknown = set(options) - {"severity", "side", "lobe"}
    if unknown:
        raise ConfigError(f"findings.{name}", f"unknown option(s) {sorted(unknown)}; use severity, side, lobe", "phantom")
    severity = float(options.get("severity", 0.6))
    if not 0 <= severity <= 1:
        raise ConfigError(f"findings.{name}.severity", f"must be in [0, 1], got {severity}", "phantom")
    options["severity"] = severity
    if "side" in options and options["side"] not in _SIDE_CHOICES.get(name, ()):
        raise ConfigError(f"findings.{name}.side", f"must be one of {_SIDE_CHOICES.get(name, ())}", "phantom")
    if "lobe" in options and options["lobe"] not in LOBES:
        raise ConfigError(f"findings.{name}.lobe", f"must be one of {LOBES}", "phantom")
    return options


def _lobe_point(
    rng: np.random.Generator, anatomy: Anatomy, lobe: str, margin: float
) -> tuple[float, float]:
    """A point well inside the given lobe's projection (at least ``margin`` from the lung edge)."""
    side = anatomy.right if lobe.startswith("R") else anatomy.left
    hilum_y = side.hilum[1]
    boxes = {
        "U": ((0.25, 0.68), (side.apex_y + 0.12, hilum_y - 0.04)),
        "M": ((0.2, 0.45), (hilum_y + 0.1, side.dome_y - 0.02)),
        "L": ((0.35, 0.75), (hilum_y + 0.12, side.dome_y + 0.1)),
    }
    (xs0, xs1), (y0, y1) = boxes[lobe[1]]
    xs = rng.uniform(xs0, xs1, 96)
    y = rng.uniform(y0, y1, 96)
    phi = lung_phi(anatomy, side, side.sign * xs, y)
    best = int(np.argmax(phi < -margin)) if (phi < -margin).any() else int(np.argmin(phi))
    return float(side.sign * xs[best]), float(y[best])


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _opacity_blob(rng, x, y, centre, severity, lobe, anatomy) -> np.ndarray:
    """Airspace opacity in [0, 1]: confluent acinar lobules in a hazy halo.

    Upper-lobe disease stops at the minor fissure (a sharp lower margin) and middle-lobe disease
    starts below it.
    """
    scale = 0.8 + 1.0 * severity
    spread = 0.065 * scale
    field = np.zeros_like(x)
    for _ in range(18):
        cx, cy = centre[0] + rng.normal(0, spread), centre[1] + rng.normal(0, spread)
        radius = rng.uniform(0.03, 0.05) * math.sqrt(scale)
        field += rng.uniform(0.5, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius * radius))
    halo = 0.4 * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * (1.7 * spread) ** 2))
    # A slow ramp keeps the margins ill-defined, unlike a nodule's.
    blob = np.maximum(smoothstep(0.2, 2.5, field), halo)
    fissure = anatomy.right.hilum[1] + 0.02
    if lobe == "RUL":
        blob *= 1 - smoothstep(-0.006, 0.006, y - fissure)
    if lobe == "RML":
        blob *= smoothstep(-0.006, 0.006, y - fissure)
    return blob


def draw_pneumothorax(anatomy, side, unit, x, y, phi, profile, options, drawing):
    """Collapse the lung toward the hilum and base; air without markings fills the rest.

    Returns the air, where markings show, the (collapsed) lung mask and the pleural line density.
    """
    retained = 1 - (0.05 + 0.4 * options["severity"])
    anchor_x = side.sign * (anatomy.mediastinum_width + 0.04)
    anchor_y = side.dome_y
    collapsed_x = anchor_x + (x - anchor_x) / retained
    collapsed_y = anchor_y + (y - anchor_y) / (1 - 0.55 * (1 - retained))
    collapsed_phi = lung_phi(anatomy, side, collapsed_x, collapsed_y) * retained
    mask = phi < 0
    collapsed = inside(collapsed_phi, unit) * mask
    # The visceral pleural line: a thin white edge, with black air and no markings outside it.
    width = max(0.004, 0.9 * unit)
    line = 0.05 * np.exp(-((collapsed_phi / width) ** 2)) * mask
    new_mask = mask & (collapsed_phi < 0)
    collapse = float(1 - new_mask.sum() / max(1, mask.sum()))
    size = "small" if collapse < 0.3 else ("moderate" if collapse < 0.55 else "large")
    drawing.meta["Pneumothorax"] = {"collapse": round(collapse, 3), "size": size}
    air = profile * (1.08 * (1 - collapsed) + 0.9 * collapsed)
    return air, profile * collapsed, new_mask, line


def effusion_fluid(side: Side, x: np.ndarray, y: np.ndarray, severity: float) -> np.ndarray:
    """Fluid fraction in [0, 1] for a pleural effusion on ``side``.

    Dependent fluid whose surface is a meniscus (concave upward, climbing the lateral chest wall)
    with a hazy upper edge; a thin layer tracks further up the wall, blunting the
    costophrenic angle even when small.
    """
    xs = side.sign * x
    height = (0.1 + 0.5 * severity) * (side.angle_y - side.apex_y)
    level = side.angle_y - height
    rise = 0.08 + 0.12 * severity
    lateral = ramp((xs - 0.1) / (side.wall_x - 0.1))
    surface = level - rise * lateral * lateral * (0.5 + 0.5 * lateral)
    main = smoothstep(-0.03, 0.1, y - surface)
    wall_distance = lateral_wall(side, y) - xs
    layer = ramp(1 - wall_distance / 0.035) * smoothstep(level - rise - 0.12, level - rise, y)
    return np.maximum(main, 0.8 * layer) * (xs > 0)


def draw_findings_density(
    rng: np.random.Generator, anatomy: Anatomy, grid: Grid, plan: dict[str, dict[str, Any]], drawing: Drawing
) -> np.ndarray:
    """Consolidation / opacity (air replaced, as a factor on lung air) and nodules (added density)."""
    x, y = grid.x, grid.y
    air_factor = np.ones_like(x)
    for name, strength in (("Consolidation", (0.55, 0.3)), ("Lung Opacity", (0.3, 0.2))):
        if name not in plan:
            continue
        options = plan[name]
        centre = _lobe_point(rng, anatomy, options["lobe"], 0.06)
        reach = 0.4 * (0.8 + 1.0 * options["severity"])
        rows, cols = grid.window(centre[0] - reach, centre[0] + reach, centre[1] - reach, centre[1] + reach)
        blob = _opacity_blob(rng, x[rows, cols], y[rows, cols], centre, options["severity"], options["lobe"], anatomy)
        air_factor[rows, cols] *= 1 - (strength[0] + strength[1] * options["severity"]) * blob
        drawing.markings[rows, cols] *= 1 - blob  # vessels are silhouetted by the opacity
        drawing.meta[name] = {"centre_px": _pixel_point(grid, centre)}
    if "Nodule" in plan:
        options = plan["Nodule"]
        diameter_cm = round(0.8 + 2.0 * options["severity"], 1)
        radius = diameter_cm / 2 / UNIT_CM
        cx, cy = _lobe_point(rng, anatomy, options["lobe"], radius + 0.04)
        rows, cols = grid.window(cx - radius, cx + radius, cy - radius, cy + radius)
        sphere = np.sqrt(ramp(1 - ((x[rows, cols] - cx) ** 2 + (y[rows, cols] - cy) ** 2) / (radius * radius)))
        drawing.density[rows, cols] += (0.2 + 0.08 * options["severity"]) * sphere
        drawing.meta["Nodule"] = {
            "diameter_cm": diameter_cm,
            "centre_px": _pixel_point(grid, (cx, cy)),
            "radius_px": round(radius / grid.unit, 2),
        }
    return air_factor


def _pixel_point(grid: Grid, point: tuple[float, float]) -> list[float]:
    rows, cols = grid.to_pixels(np.array([point[0]]), np.array([point[1]]))
    return [round(float(rows[0]), 2), round(float(cols[0]), 2)]
