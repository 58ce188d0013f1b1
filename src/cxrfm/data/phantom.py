"""A procedural PA chest radiograph: the toolkit's embedded default data.

:func:`generate_phantom` draws one frontal (PA) chest X-ray from a seed: body silhouette with
shoulders, lungs with vascular markings, heart, mediastinum and trachea, spine, posterior and
anterior ribs, clavicles, scapulae, hemidiaphragms, acquisition noise. Findings (cardiomegaly,
pleural effusion, consolidation / lung opacity, pneumothorax, nodule) are drawn on request or at
random and are consistent with the masks, labels and the English / Chinese reports.

How it is drawn: every structure is an analytic shape on a grid of *anatomical* coordinates
(``x`` to the image right = the patient's left, ``y`` downward; one unit is half the short image
side at scale 1), so a seed gives the same anatomy at any size and the whole image is a few dozen
vectorised NumPy operations. Structures add up as X-ray attenuation ("density", 1 = the full soft
tissue thickness of the trunk); lungs replace a share of the local tissue with air. Density
becomes brightness with the film curve ``1 - exp(-g * density)``, then quantum noise, detector
blur, console-style edge enhancement, gamma and contrast are applied.

Cost: smooth fields (soft tissue, vessels, parenchymal texture) are drawn on a grid of at most
512 px and bones on one of at most 768 px, then upsampled; lung, heart and finding edges are drawn
at full size inside their own windows. About 20 ms of CPU for 256 x 256, 90 ms for 512 x 512 and
330 ms for 1280 x 1280 (one core).

Deliberate simplifications: ribs, vessels and the hila are exaggerated about 3x over their
physical contrast (as console processing does); ribs are dimmed over dense regions.

Sides are the **patient's**: the patient's right lung is on the image left (``x < 0``), as on any
PA radiograph.

Determinism: each seed feeds separate random streams for anatomy, texture, findings, noise and
the report, so forcing a finding on a seed changes only that finding's region.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from cxrfm.data.labels import FINDINGS, canonical_finding
from cxrfm.data.phantom_reports import compose_report
from cxrfm.data.sample import CXRSample
from cxrfm.errors import ConfigError


# Findings the phantom can draw. Parent labels of CheXpert's hierarchy are set with them.
SUPPORTED_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Consolidation",
    "Lung Opacity",
    "Pneumothorax",
    "Nodule",
)
PARENT_LABELS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Enlarged Cardiomediastinum",),
    "Consolidation": ("Lung Opacity",),
    "Nodule": ("Lung Lesion",),
}

# Random draws used by PhantomDataset unless told otherwise (probability per finding).
DEFAULT_FINDING_PROBS: dict[str, float] = {
    "Cardiomegaly": 0.15,
    "Pleural Effusion": 0.15,
    "Consolidation": 0.1,
    "Lung Opacity": 0.05,
    "Pneumothorax": 0.1,
    "Nodule": 0.1,
}

# One anatomical unit in centimetres at scale 1 (the internal thoracic width is about 1.65 units).
UNIT_CM = 18.0

# Random streams drawn from each seed; see the module docstring.
_STREAMS = {"anatomy": 1, "texture": 2, "findings": 3, "noise": 4, "report": 5}


@dataclass
class PhantomConfig:
    """How phantoms are drawn. Ranges are ``(low, high)`` for uniform draws per seed.

    Attributes:
        size: output ``(H, W)``; any size, square or not (the short side spans the chest).
        noise_level: quantum-noise standard deviation at mid grey, in ``[0, 1]`` units.
        detector_blur: Gaussian sigma of the detector blur in pixels.
        rotation_deg: largest patient rotation in the image plane (degrees, either way).
        shift: largest patient shift, in half short sides.
        scale_range: patient size relative to the field of view.
        ctr_range: cardiothoracic ratio of normal hearts.
        gamma_range, contrast_range: display variation between "acquisitions".
        vessel_contrast: strength of the lung vascular markings (0 = none).
        rib_contrast: strength of the ribs (0 = none).
        edge_enhancement: unsharp masking as applied by X-ray consoles (0 = none).
        breast_probability: chance of breast soft-tissue shadows.
        stomach_bubble_probability: chance of a gastric air bubble under the left hemidiaphragm.
    """

    size: tuple[int, int] = (512, 512)
    noise_level: float = 0.012
    detector_blur: float = 0.6
    rotation_deg: float = 3.0
    shift: float = 0.03
    scale_range: tuple[float, float] = (1.0, 1.06)
    ctr_range: tuple[float, float] = (0.39, 0.47)
    gamma_range: tuple[float, float] = (0.85, 1.15)
    contrast_range: tuple[float, float] = (0.92, 1.08)
    vessel_contrast: float = 1.0
    rib_contrast: float = 1.0
    edge_enhancement: float = 0.6
    breast_probability: float = 0.3
    stomach_bubble_probability: float = 0.7

    def __post_init__(self) -> None:
        self.size = _check_size(self.size)
        for name in ("noise_level", "detector_blur", "rotation_deg", "shift", "vessel_contrast",
                     "rib_contrast", "edge_enhancement"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(name, "must be >= 0", "PhantomConfig")
        for name in ("breast_probability", "stomach_bubble_probability"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ConfigError(name, "must be a probability in [0, 1]", "PhantomConfig")
        for name in ("scale_range", "ctr_range", "gamma_range", "contrast_range"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high:
                raise ConfigError(name, f"must be (low, high) with 0 < low <= high, got {(low, high)}", "PhantomConfig")
            setattr(self, name, (low, high))
        if self.ctr_range[1] >= 0.5:
            raise ConfigError("ctr_range", "normal hearts need a cardiothoracic ratio below 0.5", "PhantomConfig")


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError("size", f"must be (H, W), got {size!r}", "PhantomConfig") from None
    if height < 16 or width < 16:
        raise ConfigError("size", f"must be at least 16 x 16, got {(height, width)}", "PhantomConfig")
    return height, width


@dataclass
class PhantomCase:
    """One phantom radiograph and everything known about it.

    Attributes:
        image: ``(H, W)`` float32 in ``[0, 1]``, 0 = black.
        lung_mask: ``(H, W)`` float32 {0, 1}: the aerated lung fields as drawn (heart, mediastinum,
            pleural fluid and pneumothorax air excluded, as in OpenIST-style manual masks).
        chest_mask: ``(H, W)`` float32 {0, 1}: the thoracic cavity above the diaphragm, lungs plus
            mediastinum, heart and retro-cardiac region.
        heart_mask: ``(H, W)`` float32 {0, 1}: the cardiac silhouette.
        labels: ``(len(FINDINGS),)`` float32, 1 / 0 over :data:`cxrfm.data.labels.FINDINGS`.
        findings_en, impression_en: English report sections (IU-Xray style).
        findings_zh, impression_zh: the Chinese counterpart.
        meta: ``seed``, ``size``, ``pixel_spacing_mm``, ``cardiothoracic_ratio`` and ``findings``
            (per drawn finding: severity, side, lobe, size, positions in pixels ``(row, col)``).
    """

    image: np.ndarray
    lung_mask: np.ndarray
    chest_mask: np.ndarray
    heart_mask: np.ndarray
    labels: np.ndarray
    findings_en: str
    impression_en: str
    findings_zh: str
    impression_zh: str
    meta: dict[str, Any] = field(default_factory=dict)

    label_names: tuple[str, ...] = FINDINGS

    @property
    def report_zh(self) -> str:
        """The Chinese report in one string (检查所见 + 诊断意见)."""
        return f"检查所见：{self.findings_zh}诊断意见：{self.impression_zh}"

    @property
    def positive_findings(self) -> list[str]:
        return [name for name, value in zip(self.label_names, self.labels) if value == 1]

    def to_sample(self, mask: str = "lung") -> CXRSample:
        """This case as a :class:`CXRSample` (``mask``: which mask becomes ``lung_mask``)."""
        masks = {"lung": self.lung_mask, "chest": self.chest_mask}
        if mask not in masks:
            raise ValueError(f"mask must be 'lung' or 'chest', got {mask!r}")
        meta = dict(self.meta)
        meta.update(
            view="PA",
            patient_id=f"phantom-{self.meta['seed']}",
            study_id=f"phantom-{self.meta['seed']}",
            path=None,
            report_zh=self.report_zh,
            findings_zh=self.findings_zh,
            impression_zh=self.impression_zh,
        )
        return CXRSample(
            image=torch.from_numpy(self.image)[None],
            lung_mask=torch.from_numpy(masks[mask])[None],
            labels=torch.from_numpy(self.labels.copy()),
            findings=self.findings_en,
            impression=self.impression_en,
            meta=meta,
        )


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------


@dataclass
class _Grid:
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
    def build(cls, size: tuple[int, int], scale: float, angle: float, shift: tuple[float, float]) -> "_Grid":
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


def _ramp(value: np.ndarray) -> np.ndarray:
    return np.clip(value, 0.0, 1.0)


def _smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    t = _ramp((value - edge0) / (edge1 - edge0))
    return t * t * (3 - 2 * t)


def _inside(phi: np.ndarray, unit: float) -> np.ndarray:
    """Anti-aliased indicator of ``phi < 0`` (``phi`` in anatomical units, about a distance)."""
    return _ramp(0.5 - phi / unit)


def _tube(u: np.ndarray, inner: float = 0.72, marrow: float = 0.35) -> np.ndarray:
    """Projected thickness across a bone of cortex + marrow; ``u`` in [-1, 1] across it.

    A hollow cylinder seen side-on is brightest near its edges, which is what makes ribs and
    clavicles look like bone rather than flat bands.
    """
    outer = np.sqrt(_ramp(1 - u * u))
    core = np.sqrt(np.clip(inner * inner - u * u, 0.0, None))
    return ((outer - core) + marrow * core) / math.sqrt(1 - inner * inner)


def _ellipse_phi(x, y, cx, cy, a, b, angle=0.0):
    """Approximate signed distance to a rotated ellipse (negative inside)."""
    cos, sin = math.cos(angle), math.sin(angle)
    u = (x - cx) * cos + (y - cy) * sin
    v = -(x - cx) * sin + (y - cy) * cos
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * min(a, b)


# --------------------------------------------------------------------------------------------
# Anatomy parameters
# --------------------------------------------------------------------------------------------


@dataclass
class _Side:
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
class _Anatomy:
    right: _Side
    left: _Side
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

    def side(self, name: str) -> _Side:
        return self.right if name == "right" else self.left


def _sample_anatomy(rng: np.random.Generator, config: PhantomConfig, ctr: float) -> _Anatomy:
    u = rng.uniform
    apex_y = u(-0.76, -0.68)
    right = _Side(-1.0, u(0.30, 0.36), apex_y, u(0.78, 0.84), u(0.58, 0.66), u(0.30, 0.40),
                  u(0.26, 0.34), (u(0.15, 0.19), u(-0.12, -0.06)))
    left = _Side(1.0, u(0.30, 0.36), apex_y + u(-0.02, 0.03), right.wall_x + u(-0.03, 0.01),
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
    return _Anatomy(
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


def _dome_y(side: _Side, xs: np.ndarray) -> np.ndarray:
    """Hemidiaphragm height under lateral position ``xs``; meets the chest wall at the angle."""
    depth = side.angle_y - 0.015 - side.dome_y
    lateral = np.clip((xs - side.dome_x) / (side.wall_x - side.dome_x), 0, None)
    medial = np.clip((side.dome_x - xs) / side.dome_x, 0, None)
    return side.dome_y + depth * lateral * lateral + 0.12 * medial * medial


def _lateral_wall(side: _Side, y: np.ndarray) -> np.ndarray:
    """Lateral lung edge at height ``y``: a rounded apex widening to a near-vertical wall.

    A superellipse quadrant ``sqrt(1 - (1 - t)^2.5)`` (written without a fractional power, which
    is slow on large arrays).
    """
    t = _ramp((y - side.apex_y) / (side.angle_y - side.apex_y))
    u = 1 - t
    return side.apex_x + (side.wall_x - side.apex_x) * np.sqrt(1 - u * u * np.sqrt(u))


def _envelope(side: _Side, xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance-like field of the hemithorax (apex, lateral wall, medial line), negative inside."""
    u = 1 - _ramp((y - side.apex_y) / (side.angle_y - side.apex_y))
    lateral = _lateral_wall(side, y)
    medial = side.apex_x - (side.apex_x + 0.02) * np.sqrt(1 - u * u * u)
    return np.maximum(np.maximum(xs - lateral, medial - xs), side.apex_y - y)


def _mediastinum_edge(anatomy: _Anatomy, side: _Side, y: np.ndarray) -> np.ndarray:
    """Lateral edge of the upper mediastinum on one side (trachea, SVC, aortic knob)."""
    width = anatomy.mediastinum_width + 0.03 * _ramp((y + 0.7) / 0.6)
    # Below the heart's centre the heart itself is the border; widen the mediastinum there so
    # no sliver of lung is left between the heart and the diaphragm.
    below_heart = _ramp((y - anatomy.heart_center[1]) / 0.12)
    if side.sign > 0:
        knob = anatomy.aortic_knob * np.exp(-(((y + 0.34) / 0.07) ** 2))
        trunk = 0.025 * np.exp(-(((y + 0.17) / 0.06) ** 2))
        return width + knob + trunk + 0.15 * below_heart
    return width + 0.015 * np.exp(-(((y + 0.05) / 0.12) ** 2)) + 0.03 * below_heart


def _heart_phi(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy = anatomy.heart_center
    a, b = anatomy.heart_axes
    ventricles = _ellipse_phi(x, y, cx, cy, a, b, anatomy.heart_angle)
    atrium = _ellipse_phi(x, y, *anatomy.atrium)
    return _smooth_min(ventricles, atrium, 0.04)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two shapes with a rounded join of size ``k`` (polynomial smooth minimum)."""
    h = _ramp(0.5 + 0.5 * (b - a) / k)
    return b + (a - b) * h - k * h * (1 - h)


def _lung_phi(anatomy: _Anatomy, side: _Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance-like field of one lung (negative inside)."""
    xs = side.sign * x
    dome = _dome_y(side, xs)
    phi = _envelope(side, xs, y)
    phi = np.maximum(phi, (y - dome) * 0.8)
    # Mediastinum and heart: joined smoothly on the right (one convex border from the SVC to the
    # right atrium), sharply on the left (aortic knob, cardiac waist, left ventricle).
    mediastinum = xs - _mediastinum_edge(anatomy, side, y)
    blend = 0.07 if side.sign < 0 else 0.015
    return np.maximum(phi, -_smooth_min(mediastinum, _heart_phi(anatomy, x, y), blend))


def _chest_box(anatomy: _Anatomy) -> tuple[float, float, float, float]:
    top = min(anatomy.right.apex_y, anatomy.left.apex_y) - 0.02
    bottom = max(anatomy.right.angle_y, anatomy.left.angle_y) + 0.02
    return -anatomy.right.wall_x - 0.03, anatomy.left.wall_x + 0.03, top, bottom


def _heart_box(anatomy: _Anatomy) -> tuple[float, float, float, float]:
    cx, cy = anatomy.heart_center
    reach = max(anatomy.heart_axes) + 0.02
    return anatomy.atrium[0] - anatomy.atrium[2] - 0.05, cx + reach, cy - reach - 0.1, cy + reach


def _chest_phi(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The thoracic cavity: between the lateral walls, below the apices, above both domes."""
    parts = []
    for side in (anatomy.right, anatomy.left):
        parts.append(side.sign * x - _lateral_wall(side, y))
    floor = np.minimum(_dome_y(anatomy.right, -x), _dome_y(anatomy.left, x))
    top = np.minimum(anatomy.right.apex_y, anatomy.left.apex_y)
    return np.maximum(np.maximum(parts[0], parts[1]), np.maximum(top - y, (y - floor) * 0.8))


# --------------------------------------------------------------------------------------------
# Soft tissue and bone (density contributions)
# --------------------------------------------------------------------------------------------


def _body_thickness(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft tissue thickness in [0, ~1.1]: trunk (an elliptic cylinder), neck, shoulders, arms."""
    ax = np.abs(x)
    width = anatomy.body_width * (1 + 0.03 * y)
    # The trapezius slopes from the neck down to the shoulders.
    top = anatomy.shoulder_y - 0.1 + 0.2 * _smoothstep(0.12, 0.95, ax)
    trunk = _ramp(1 - (x / width) ** 2) ** 0.7 * _smoothstep(-0.03, 0.1, y - top)
    neck = 0.65 * np.sqrt(_ramp(1 - (x / 0.27) ** 2))
    arm = _ramp(1 - ((ax - anatomy.body_width - 0.1) / 0.26) ** 2)
    arm *= _smoothstep(0.05, 0.25, y - anatomy.shoulder_y)
    shoulder = _ramp(1 - ((ax - 0.95) / 0.28) ** 2 - ((y - anatomy.shoulder_y - 0.2) / 0.22) ** 2)
    # The arm covers the trunk's edge, so there is no seam; the deltoid caps it at the shoulder.
    body = np.maximum(np.maximum(trunk, neck), np.maximum(0.45 * shoulder, 0.4 * arm))
    # Pectoral muscles and axillary folds make the upper lateral chest denser.
    pectoral = _smoothstep(-0.2, -0.7, y) * _ramp((ax - 0.3) / 0.45) * trunk
    return body + 0.12 * pectoral


def _breasts(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for sign in (-1.0, 1.0):
        cx, cy, a, b = sign * 0.52, 0.3, 0.38, 0.28
        dome = np.sqrt(_ramp(1 - ((x - cx) / a) ** 2 - ((y - cy) / b) ** 2))
        out += dome * _smoothstep(cy - b, cy + 0.4 * b, y)
    return 0.12 * out


def _rib_phase(s: np.ndarray, start: float, spacing: float, growth: float) -> np.ndarray:
    """Rib number (fractional) along ``s``; spacing grows by ``growth`` per unit downward."""
    return np.log(np.clip(1 + growth * (s - start), 0.05, None)) / (growth * spacing)


def _rib_bands(phase: np.ndarray, width: np.ndarray | float, count: int, inner: float) -> np.ndarray:
    # Real ribs are not evenly spaced: warp the rib number smoothly.
    phase = phase + 0.07 * np.sin(2.3 * phase + count)
    index = np.floor(phase)
    frac = phase - index
    u = 2 * frac / width - 1
    return _tube(u, inner=inner) * ((index >= 0) & (index < count))


def _ribs(anatomy: _Anatomy, side: _Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Posterior ribs (convex-up arcs from the spine) and fainter anterior ribs (sloping down medially)."""
    xs = side.sign * x
    t = xs / (side.wall_x + 0.05)
    start = min(anatomy.right.apex_y, anatomy.left.apex_y) - 0.2 + anatomy.rib_offset * (side.sign > 0)
    # Upper ribs are more curved than lower ones.
    curvature = 0.95 - 0.35 * _ramp((y + 0.6) / 1.2)
    t_pos = np.clip(t, 0, None)
    s_posterior = y - curvature * (-0.45 * t + 0.95 * t_pos * t_pos * np.sqrt(t_pos))
    phase = _rib_phase(s_posterior, start, anatomy.rib_spacing, anatomy.rib_growth)
    posterior = _rib_bands(phase, 0.3 + 0.14 * _ramp(t), 12, inner=0.8)
    posterior *= _smoothstep(0.05, 0.15, t) * (1 - _smoothstep(1.0, 1.14, t))
    s_anterior = y + 0.34 * t - 0.12 * t * t
    phase = _rib_phase(s_anterior, start + 0.22, anatomy.rib_spacing * 0.85, anatomy.rib_growth)
    anterior = _rib_bands(phase, 0.5, 7, inner=0.8)
    anterior *= _smoothstep(0.24, 0.32, t) * (1 - _smoothstep(0.92, 1.06, t))
    # The rib cage: just outside the lateral lung edge, from the first rib to the costal margin.
    cage = _ramp((_lateral_wall(side, y) + 0.07 - xs) / 0.04) * _smoothstep(side.apex_y - 0.16, side.apex_y - 0.08, y)
    cage *= 1 - 0.9 * _smoothstep(side.dome_y - 0.05, side.angle_y + 0.15, y)
    return (0.08 * posterior + 0.06 * anterior) * cage


def _spine(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertebral bodies with end plates, pedicles and spinous processes, and the discs between."""
    half_width = 0.06 + 0.022 * _ramp((y + 0.8) / 1.6)
    u = (x - 0.3 * anatomy.trachea_x) / half_width
    start = min(anatomy.right.apex_y, anatomy.left.apex_y) - 0.2
    phase = _rib_phase(y, start - 0.05, anatomy.rib_spacing, anatomy.rib_growth)
    v = (phase - np.floor(phase) - 0.53) / 0.45
    u2, v2 = u * u, v * v
    radius = np.sqrt(np.sqrt(u2 * u2 + v2 * v2))  # a rounded square
    body = _ramp((1 - radius) / 0.15)
    rim = np.exp(-(((radius - 0.93) / 0.08) ** 2))
    pedicles = np.zeros_like(x)
    for centre in (-0.68, 0.68):
        r = np.sqrt(((u - centre) / 0.2) ** 2 + ((v + 0.35) / 0.3) ** 2)
        pedicles += np.exp(-(((r - 0.85) / 0.25) ** 2))
    spinous = np.exp(-((u / 0.14) ** 2 + ((v - 0.45) / 0.3) ** 2))
    column = _ramp(1.3 - np.abs(u) / 1.1)
    return 0.1 * column + 0.035 * body + 0.025 * rim + 0.03 * pedicles + 0.02 * spinous


def _clavicle(anatomy: _Anatomy, side: _Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xs = side.sign * x
    tau = (xs - 0.09) / 0.68
    tau_clipped = np.clip(tau, 0, 1.1)
    centre = -0.64 - 0.1 * tau_clipped * np.sqrt(tau_clipped) + 0.025 * np.sin(np.pi * np.clip(tau, 0, 1))
    half = 0.05 * (1 - 0.3 * _ramp(tau)) + 0.012 * np.exp(-((tau / 0.08) ** 2))
    ends = _smoothstep(-0.04, 0.02, tau) * (1 - _smoothstep(0.98, 1.05, tau))
    return 0.26 * _tube((y - centre) / half, inner=0.78) * ends


def _scapula(anatomy: _Anatomy, side: _Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The scapula projects over the upper lateral chest; its medial border is a faint line."""
    xs = side.sign * x
    border = 0.6 + 0.16 * _ramp((y + 0.8) / 0.75)
    phi = np.maximum(border - xs, (y + 0.06) + 0.7 * (xs - 0.78))
    phi = np.maximum(phi, anatomy.shoulder_y + 0.08 - y)
    phi = np.maximum(phi, xs - anatomy.body_width + 0.04)
    plate = _ramp(-phi / 0.04)
    edge = np.exp(-((phi / 0.008) ** 2))
    return 0.06 * plate + 0.03 * edge


def _humerus(anatomy: _Anatomy, side: _Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xs = side.sign * x
    cx, cy, radius = anatomy.body_width + 0.02, anatomy.shoulder_y + 0.2, 0.13
    r = np.sqrt((xs - cx) ** 2 + (y - cy) ** 2) / radius
    head = np.sqrt(_ramp(1 - r * r)) * 0.7 + np.exp(-(((r - 0.95) / 0.1) ** 2)) * 0.3
    return 0.07 * head


def _capsule(x, y, p0, p1, radius):
    """Projected thickness profile of a tube from ``p0`` to ``p1`` (1 on its axis)."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = _ramp(((x - p0[0]) * dx + (y - p0[1]) * dy) / (dx * dx + dy * dy))
    distance = np.sqrt((x - p0[0] - t * dx) ** 2 + (y - p0[1] - t * dy) ** 2)
    return np.sqrt(_ramp(1 - (distance / radius) ** 2))


def _airways(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trachea down to the carina and the two main bronchi (air: negative density)."""
    carina = (anatomy.trachea_x, -0.3)
    centre = anatomy.trachea_x - 0.015 * np.exp(-(((y + 0.34) / 0.1) ** 2))
    trachea = np.sqrt(_ramp(1 - ((x - centre) / 0.033) ** 2)) * (1 - _smoothstep(-0.33, -0.29, y))
    right = _capsule(x, y, carina, (0.6 * -anatomy.right.hilum[0], 0.5 * (anatomy.right.hilum[1] - 0.3)), 0.022)
    left = _capsule(x, y, carina, (0.6 * anatomy.left.hilum[0], 0.5 * (anatomy.left.hilum[1] - 0.3) + 0.02), 0.02)
    return -(0.25 * trachea + 0.1 * np.maximum(right, left))


# --------------------------------------------------------------------------------------------
# Lung texture: vascular tree and parenchyma, drawn at a working resolution then upsampled
# --------------------------------------------------------------------------------------------

_WORKING_SIDE = 512  # smooth fields are drawn at most this large, then upsampled
_DETAIL_SIDE = 768  # bones are drawn at most this large (their edges stay sharp at 1280)


def _vessel_segments(rng: np.random.Generator, side: _Side, generations: int = 8) -> np.ndarray:
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


def _vessel_density(rng: np.random.Generator, anatomy: _Anatomy, grid: _Grid) -> np.ndarray:
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


def _noise_fields(rng: np.random.Generator, shape: tuple[int, int], sigmas_px: Sequence[float]) -> list[np.ndarray]:
    """Smooth zero-mean noise of unit standard deviation at each scale (one random draw)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    fields = [ndimage.gaussian_filter(white, sigma, truncate=3.0) for sigma in sigmas_px]
    return [field / (field.std() + 1e-8) for field in fields]


def _resample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a ``(H, W)`` field to ``shape`` (area averaging when shrinking)."""
    if field.shape == tuple(shape):
        return field
    tensor = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None, None]
    shrinking = shape[0] < field.shape[0] and shape[1] < field.shape[1]
    if shrinking:
        out = torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="area")
    else:
        out = torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


# --------------------------------------------------------------------------------------------
# Findings: which, where and how large
# --------------------------------------------------------------------------------------------

LOBES: tuple[str, ...] = ("RUL", "RML", "RLL", "LUL", "LLL")
_SIDE_CHOICES = {"Pleural Effusion": ("left", "right", "bilateral"), "Pneumothorax": ("left", "right")}


def _size_word(severity: float) -> str:
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
    forced = _canonical_keys(findings or {}, "findings")
    probs = _canonical_keys(finding_probs or {}, "finding_probs")
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


def _canonical_keys(mapping: Mapping[str, Any], field_name: str) -> dict[str, Any]:
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
    rng: np.random.Generator, anatomy: _Anatomy, lobe: str, margin: float
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
    phi = _lung_phi(anatomy, side, side.sign * xs, y)
    best = int(np.argmax(phi < -margin)) if (phi < -margin).any() else int(np.argmin(phi))
    return float(side.sign * xs[best]), float(y[best])


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
    blob = np.maximum(_smoothstep(0.2, 2.5, field), halo)
    fissure = anatomy.right.hilum[1] + 0.02
    if lobe == "RUL":
        blob *= 1 - _smoothstep(-0.006, 0.006, y - fissure)
    if lobe == "RML":
        blob *= _smoothstep(-0.006, 0.006, y - fissure)
    return blob


# --------------------------------------------------------------------------------------------
# Drawing one case
# --------------------------------------------------------------------------------------------


def _working_shape(size: tuple[int, int], side: int = _WORKING_SIDE) -> tuple[int, int]:
    factor = min(1.0, side / max(size))
    return max(8, round(size[0] * factor)), max(8, round(size[1] * factor))


def _air_profile(phi: np.ndarray) -> np.ndarray:
    """Air thickness across a lung: zero at its edge, rising fast, thickest centrally."""
    depth = np.clip(-phi, 0.0, None)
    return _ramp(depth / 0.1) ** 0.45 * (0.8 + 0.2 * _ramp(depth / 0.3))


def _lung_depth(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative air thickness of the lungs (a smooth field, drawn on the coarse grid).

    The lung is thin at its lateral edge and apex, and overlapped by shoulder girdle soft tissue
    at the top, so it is less dark there.
    """
    depth = np.zeros_like(x)
    for side in (anatomy.right, anatomy.left):
        t = _ramp((y - side.apex_y) / (side.angle_y - side.apex_y))
        lateral = np.sqrt(_ramp((_lateral_wall(side, y) - side.sign * x) / 0.22))
        depth += (side.sign * x > 0) * (0.6 + 0.4 * lateral * (0.75 + 0.25 * _ramp(t / 0.35)))
    return depth * (0.8 + 0.2 * _smoothstep(-0.75, -0.2, y))


def _add_in_window(target: np.ndarray, grid: _Grid, box: tuple[float, float, float, float], draw) -> None:
    rows, cols = grid.window(*box)
    if rows.stop > rows.start and cols.stop > cols.start:
        target[rows, cols] += draw(grid.x[rows, cols], grid.y[rows, cols])


@dataclass
class _Drawing:
    """Density and masks of one case while it is being drawn."""

    density: np.ndarray
    lung_mask: np.ndarray
    markings: np.ndarray  # where vascular markings are visible (aerated, uncollapsed lung)
    meta: dict[str, dict[str, Any]]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _lung_box(side: _Side) -> tuple[float, float, float, float]:
    lo, hi = sorted((0.0, side.sign * (side.wall_x + 0.03)))
    return lo, hi, side.apex_y - 0.02, side.angle_y + 0.02


def _draw_lungs(
    anatomy: _Anatomy, grid: _Grid, plan: dict[str, dict[str, Any]], depth: np.ndarray
) -> tuple[np.ndarray, _Drawing]:
    """Air in the lungs after effusion / pneumothorax, the lung mask and where markings show.

    ``depth``: the relative air thickness from :func:`_lung_depth`, at full resolution.
    """
    air = np.zeros_like(grid.x)
    drawing = _Drawing(np.zeros_like(grid.x), np.zeros(grid.x.shape, dtype=bool), np.zeros_like(grid.x), {})
    for name in ("right", "left"):
        side = anatomy.side(name)
        rows, cols = grid.window(*_lung_box(side))
        x, y = grid.x[rows, cols], grid.y[rows, cols]
        phi = _lung_phi(anatomy, side, x, y)
        profile = _air_profile(phi) * depth[rows, cols]
        mask = phi < 0
        side_air, markings = profile, profile
        pneumothorax = plan.get("Pneumothorax")
        if pneumothorax is not None and pneumothorax["side"] == name:
            side_air, markings, mask, line = _pneumothorax(anatomy, side, grid.unit, x, y, phi, profile, pneumothorax, drawing)
            drawing.density[rows, cols] += line
        effusion = plan.get("Pleural Effusion")
        if effusion is not None and effusion["side"] in (name, "bilateral"):
            fluid = _effusion(side, x, y, effusion["severity"])
            side_air, markings = side_air * (1 - fluid), markings * (1 - fluid)
            mask &= fluid < 0.5
        # Pixel-thin tips (costophrenic angles, cardiophrenic recesses) can alias into islands;
        # one lung is one region, so islands are dropped from the mask and the image alike.
        islands = mask & ~_largest_component(mask)
        if islands.any():
            mask = mask & ~islands
            side_air, markings = np.where(islands, 0, side_air), np.where(islands, 0, markings)
        air[rows, cols] += side_air
        drawing.markings[rows, cols] += markings
        drawing.lung_mask[rows, cols] |= mask
    return air, drawing


def _pneumothorax(anatomy, side, unit, x, y, phi, profile, options, drawing):
    """Collapse the lung toward the hilum and base; air without markings fills the rest.

    Returns the air, where markings show, the (collapsed) lung mask and the pleural line density.
    """
    retained = 1 - (0.05 + 0.4 * options["severity"])
    anchor_x = side.sign * (anatomy.mediastinum_width + 0.04)
    anchor_y = side.dome_y
    collapsed_x = anchor_x + (x - anchor_x) / retained
    collapsed_y = anchor_y + (y - anchor_y) / (1 - 0.55 * (1 - retained))
    collapsed_phi = _lung_phi(anatomy, side, collapsed_x, collapsed_y) * retained
    mask = phi < 0
    collapsed = _inside(collapsed_phi, unit) * mask
    # The visceral pleural line: a thin white edge, with black air and no markings outside it.
    width = max(0.004, 0.9 * unit)
    line = 0.05 * np.exp(-((collapsed_phi / width) ** 2)) * mask
    new_mask = mask & (collapsed_phi < 0)
    collapse = float(1 - new_mask.sum() / max(1, mask.sum()))
    size = "small" if collapse < 0.3 else ("moderate" if collapse < 0.55 else "large")
    drawing.meta["Pneumothorax"] = {"collapse": round(collapse, 3), "size": size}
    air = profile * (1.08 * (1 - collapsed) + 0.9 * collapsed)
    return air, profile * collapsed, new_mask, line


def _effusion(side: _Side, x: np.ndarray, y: np.ndarray, severity: float) -> np.ndarray:
    """Fluid fraction in [0, 1] for a pleural effusion on ``side``.

    Dependent fluid whose surface is a meniscus (concave upward, climbing the lateral chest wall)
    with a hazy upper edge; a thin layer tracks further up the wall, blunting the
    costophrenic angle even when small.
    """
    xs = side.sign * x
    height = (0.1 + 0.5 * severity) * (side.angle_y - side.apex_y)
    level = side.angle_y - height
    rise = 0.08 + 0.12 * severity
    lateral = _ramp((xs - 0.1) / (side.wall_x - 0.1))
    surface = level - rise * lateral * lateral * (0.5 + 0.5 * lateral)
    main = _smoothstep(-0.03, 0.1, y - surface)
    wall_distance = _lateral_wall(side, y) - xs
    layer = _ramp(1 - wall_distance / 0.035) * _smoothstep(level - rise - 0.12, level - rise, y)
    return np.maximum(main, 0.8 * layer) * (xs > 0)


def _smooth_density(anatomy: _Anatomy, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue, breasts, gastric bubble and hila (smooth, drawn on the coarse grid).

    Returns the density and the body thickness alone (lungs replace a fraction of it).
    """
    body = _body_thickness(anatomy, x, y)
    density = body.copy()
    if anatomy.stomach_bubble is not None:
        bx, depth, radius = anatomy.stomach_bubble
        by = float(_dome_y(anatomy.left, np.float32(bx))) + depth
        bubble = np.sqrt(_ramp(1 - ((x - bx) / (1.5 * radius)) ** 2 - ((y - by) / radius) ** 2))
        density -= 0.2 * bubble * _smoothstep(0.01, -0.01, y - by - 0.35 * radius)  # air above a fluid level
    if anatomy.breasts:
        density += _breasts(anatomy, x, y)
    for side in (anatomy.right, anatomy.left):
        hx, hy = side.sign * (side.hilum[0] + 0.02), side.hilum[1] + 0.02
        density += 0.1 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * 0.05**2))
    return density, body


def _bone_density(config: PhantomConfig, anatomy: _Anatomy, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Bones and airways at full resolution, each drawn only inside its own window.

    Returns the density and, separately, the ribs, whose visibility depends on the lungs behind them.
    """
    density = np.zeros_like(grid.x)
    ribs = np.zeros_like(grid.x)
    top, bottom = grid.bounds[2], grid.bounds[3]
    for side in (anatomy.right, anatomy.left):
        lo, hi = sorted((0.0, side.sign * (side.wall_x + 0.15)))
        box = (lo, hi, side.apex_y - 0.2, side.angle_y + 0.4)
        _add_in_window(ribs, grid, box, lambda a, b, s=side: _ribs(anatomy, s, a, b))
        lo, hi = sorted((side.sign * 0.05, side.sign * 0.9))
        _add_in_window(density, grid, (lo, hi, -1.0, -0.45), lambda a, b, s=side: _clavicle(anatomy, s, a, b))
        lo, hi = sorted((side.sign * 0.5, side.sign * 1.3))
        _add_in_window(density, grid, (lo, hi, anatomy.shoulder_y, 0.05), lambda a, b, s=side: _scapula(anatomy, s, a, b))
        _add_in_window(density, grid, (lo, hi, anatomy.shoulder_y, 0.0), lambda a, b, s=side: _humerus(anatomy, s, a, b))
    _add_in_window(density, grid, (-0.13, 0.13, top, bottom), lambda a, b: _spine(anatomy, a, b))
    _add_in_window(density, grid, (-0.3, 0.3, top, 0.0), lambda a, b: _airways(anatomy, a, b))
    return density, config.rib_contrast * ribs


def _draw_findings_density(
    rng: np.random.Generator, anatomy: _Anatomy, grid: _Grid, plan: dict[str, dict[str, Any]], drawing: _Drawing
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
        sphere = np.sqrt(_ramp(1 - ((x[rows, cols] - cx) ** 2 + (y[rows, cols] - cy) ** 2) / (radius * radius)))
        drawing.density[rows, cols] += (0.2 + 0.08 * options["severity"]) * sphere
        drawing.meta["Nodule"] = {
            "diameter_cm": diameter_cm,
            "centre_px": _pixel_point(grid, (cx, cy)),
            "radius_px": round(radius / grid.unit, 2),
        }
    return air_factor


def _pixel_point(grid: _Grid, point: tuple[float, float]) -> list[float]:
    rows, cols = grid.to_pixels(np.array([point[0]]), np.array([point[1]]))
    return [round(float(rows[0]), 2), round(float(cols[0]), 2)]


def _display(config: PhantomConfig, anatomy: _Anatomy, density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Density -> film brightness, then quantum noise, detector blur, console processing and LUT."""
    image = 1 - np.exp(-anatomy.gain * np.clip(density, 0.0, None))
    # Fewer photons reach the detector behind dense tissue, so noise grows with brightness.
    sigma = config.noise_level * (0.3 + 1.4 * image)
    image = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    if config.detector_blur > 0:
        image = ndimage.gaussian_filter(image, config.detector_blur, truncate=3.0)
    if config.edge_enhancement > 0:
        working = _working_shape(image.shape)
        low = _resample(image, (working[0] // 4, working[1] // 4))
        low = _resample(ndimage.gaussian_filter(low, 2.0), image.shape)
        image = image + config.edge_enhancement * (image - low)
    image = np.clip(image * anatomy.contrast, 0.0, 1.0) ** anatomy.gamma
    return image.astype(np.float32)


def _measured_ctr(heart: np.ndarray, chest: np.ndarray) -> float:
    """Cardiothoracic ratio from masks: widest heart extent over widest chest extent."""
    heart_cols = np.flatnonzero(heart.any(axis=0))
    chest_cols = np.flatnonzero(chest.any(axis=0))
    if heart_cols.size == 0 or chest_cols.size == 0:
        return float("nan")
    return float((heart_cols[-1] - heart_cols[0] + 1) / (chest_cols[-1] - chest_cols[0] + 1))


class ChestPhantom:
    """Draws phantom PA chest radiographs with :class:`PhantomConfig`.

    ``ChestPhantom(config).generate(seed)`` is deterministic: the same seed and config give a
    bit-identical case; different seeds give different anatomy, pose, texture and noise.
    """

    def __init__(self, config: PhantomConfig | None = None):
        self.config = config or PhantomConfig()

    def generate(
        self,
        seed: int,
        findings: Mapping[str, float | Mapping[str, Any]] | None = None,
        finding_probs: Mapping[str, float] | None = None,
    ) -> PhantomCase:
        """One case. See :func:`resolve_findings` for ``findings`` / ``finding_probs``."""
        seed = _check_seed(seed)
        rngs = {name: np.random.default_rng([seed, stream]) for name, stream in _STREAMS.items()}
        plan = resolve_findings(findings, finding_probs, rngs["findings"])
        anatomy, grid, coarse, detail = self._anatomy(rngs["anatomy"], plan)
        # Smooth fields are drawn on the coarse grid and upsampled; edges and bones at full size.
        smooth, body = (_resample(field, grid.size) for field in _smooth_density(anatomy, coarse.x, coarse.y))
        depth = _resample(_lung_depth(anatomy, coarse.x, coarse.y), grid.size)
        texture = _resample(self._texture(rngs["texture"], anatomy, coarse), grid.size)
        air, drawing = _draw_lungs(anatomy, grid, plan, depth)
        air *= _draw_findings_density(rngs["findings"], anatomy, grid, plan, drawing)
        bones, ribs = (_resample(field, grid.size) for field in _bone_density(self.config, anatomy, detail))
        density = smooth + bones + drawing.density
        # Over dense regions the film curve and console processing flatten the ribs.
        density += ribs * (0.4 + 0.6 * _ramp(air * 2.5))
        # Lungs replace a share of the local tissue thickness (thin at the lateral chest wall).
        density -= anatomy.lung_air * air * np.minimum(body, 1.0)
        density += texture * drawing.markings
        image = _display(self.config, anatomy, density, rngs["noise"])
        return self._case(seed, anatomy, grid, plan, drawing, image, rngs["report"])

    def _anatomy(self, rng: np.random.Generator, plan: dict[str, dict[str, Any]]) -> tuple[_Anatomy, _Grid, _Grid, _Grid]:
        """Anatomy and three grids in the same pose: full size, coarse (smooth fields), detail (bones)."""
        config = self.config
        ctr = rng.uniform(*config.ctr_range)
        scale = rng.uniform(*config.scale_range)
        shift = rng.uniform(-1, 1, 2) * config.shift
        # Frame the chest as a PA film does: the image centre falls just above the hila.
        shift[1] += 0.05 * scale
        pose = (scale, math.radians(rng.uniform(-1, 1) * config.rotation_deg), tuple(shift))
        if "Cardiomegaly" in plan:
            ctr = 0.53 + 0.09 * plan["Cardiomegaly"]["severity"]
        anatomy = _sample_anatomy(rng, config, ctr)
        grids = [_Grid.build(size, *pose) for size in (config.size, _working_shape(config.size),
                                                         _working_shape(config.size, _DETAIL_SIDE))]
        return anatomy, *grids

    def _texture(self, rng: np.random.Generator, anatomy: _Anatomy, coarse: _Grid) -> np.ndarray:
        """Vascular markings and parenchymal texture on the coarse grid (shown where lung is aerated)."""
        pixels_per_unit = 1 / coarse.unit
        field = self.config.vessel_contrast * _vessel_density(rng, anatomy, coarse)
        coarse_noise, fine_noise = _noise_fields(rng, coarse.size, (0.012 * pixels_per_unit, 0.004 * pixels_per_unit))
        field += 0.01 * coarse_noise + 0.01 * fine_noise
        return field

    @staticmethod
    def _mask_in_window(grid: _Grid, box, draw) -> np.ndarray:
        mask = np.zeros(grid.size, dtype=bool)
        rows, cols = grid.window(*box)
        mask[rows, cols] = draw(grid.x[rows, cols], grid.y[rows, cols])
        return mask

    def _case(self, seed, anatomy, grid, plan, drawing, image, report_rng) -> PhantomCase:
        chest = self._mask_in_window(grid, _chest_box(anatomy), lambda x, y: _chest_phi(anatomy, x, y) < 0)
        heart = self._mask_in_window(grid, _heart_box(anatomy), lambda x, y: _heart_phi(anatomy, x, y) < 0) & chest
        lung = drawing.lung_mask & chest
        finding_meta = {name: {**options, **drawing.meta.get(name, {})} for name, options in plan.items()}
        for name, options in finding_meta.items():
            options["severity"] = round(float(options["severity"]), 3)
            if name == "Pleural Effusion":
                options["size"] = _size_word(options["severity"])
        ctr = _measured_ctr(heart, chest)
        if "Cardiomegaly" in finding_meta:
            finding_meta["Cardiomegaly"]["ctr"] = round(ctr, 3)
        report = compose_report(finding_meta, report_rng)
        labels = np.zeros(len(FINDINGS), dtype=np.float32)
        for name in finding_meta:
            for label in (name, *PARENT_LABELS.get(name, ())):
                labels[FINDINGS.index(label)] = 1
        if not finding_meta:
            labels[FINDINGS.index("No Finding")] = 1
        meta = {
            "seed": seed,
            "source": "phantom",
            "size": list(grid.size),
            "pixel_spacing_mm": round(grid.unit * UNIT_CM * 10, 4),
            "cardiothoracic_ratio": round(ctr, 3),
            "findings": finding_meta,
        }
        return PhantomCase(
            image=image,
            lung_mask=lung.astype(np.float32),
            chest_mask=chest.astype(np.float32),
            heart_mask=heart.astype(np.float32),
            labels=labels,
            findings_en=report.findings_en,
            impression_en=report.impression_en,
            findings_zh=report.findings_zh,
            impression_zh=report.impression_zh,
            meta=meta,
        )


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def generate_phantom(
    seed: int,
    size: tuple[int, int] | None = None,
    findings: Mapping[str, float | Mapping[str, Any]] | None = None,
    *,
    finding_probs: Mapping[str, float] | None = None,
    config: PhantomConfig | None = None,
) -> PhantomCase:
    """One phantom PA chest radiograph.

    Args:
        seed: non-negative integer; the same seed gives a bit-identical case.
        size: ``(H, W)``; default ``config.size`` (512 x 512).
        findings: findings to force, ``{name: severity in [0, 1]}`` or
            ``{name: {"severity": s, "side": "left", "lobe": "RUL"}}``; severity 0 forces absence.
        finding_probs: probabilities for drawing the other findings at random (default: none, a
            normal case unless ``findings`` says otherwise).
        config: drawing options.

    Returns:
        a :class:`PhantomCase`.
    """
    config = config or PhantomConfig()
    if size is not None:
        config = dataclasses.replace(config, size=_check_size(size))
    return ChestPhantom(config).generate(seed, findings=findings, finding_probs=finding_probs)


# --------------------------------------------------------------------------------------------
# Dataset and figure
# --------------------------------------------------------------------------------------------

# Default seed ranges per split, far enough apart that splits never share a phantom.
SPLIT_SEED_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class PhantomDataset(Dataset):
    """``num_samples`` phantom radiographs as :class:`CXRSample` (the embedded default dataset).

    Item ``i`` is ``generate_phantom(seed + i)``, so it is deterministic and cheap to regenerate;
    nothing is cached or downloaded.

    Args:
        num_samples: dataset length.
        image_size: ``(H, W)`` of every image.
        seed: seed of item 0; default by split (train 0, val 1,000,000, test 2,000,000) so
            that splits never overlap.
        finding_probs: per-finding probabilities of random findings (``{}`` for all-normal).
        split: recorded in each sample's meta.
        config: drawing options (its ``size`` is replaced by ``image_size``).
        mask: which mask becomes ``CXRSample.lung_mask``: ``"lung"`` (lung fields) or
            ``"chest"`` (thoracic cavity).

    Attributes:
        label_names: :data:`cxrfm.data.labels.FINDINGS` (labels are 1 / 0, never unknown).
    """

    label_names: tuple[str, ...] = FINDINGS

    def __init__(
        self,
        num_samples: int,
        image_size: tuple[int, int] = (256, 256),
        seed: int | None = None,
        finding_probs: Mapping[str, float] | None = None,
        split: str = "train",
        config: PhantomConfig | None = None,
        mask: str = "lung",
    ):
        if int(num_samples) < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if mask not in ("lung", "chest"):
            raise ValueError(f"mask must be 'lung' or 'chest', got {mask!r}")
        self.num_samples = int(num_samples)
        self.seed = _check_seed(SPLIT_SEED_OFFSETS.get(split, 0) if seed is None else seed)
        self.finding_probs = dict(DEFAULT_FINDING_PROBS if finding_probs is None else finding_probs)
        _canonical_keys(self.finding_probs, "finding_probs")  # fail now, not in a worker
        self.split = split
        self.mask = mask
        self.phantom = ChestPhantom(dataclasses.replace(config or PhantomConfig(), size=_check_size(image_size)))

    def __len__(self) -> int:
        return self.num_samples

    def case(self, index: int) -> PhantomCase:
        """The full :class:`PhantomCase` behind item ``index`` (with chest and heart masks)."""
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} phantoms")
        return self.phantom.generate(self.seed + index, finding_probs=self.finding_probs)

    def __getitem__(self, index: int) -> CXRSample:
        sample = self.case(index).to_sample(mask=self.mask)
        sample.meta["split"] = self.split
        return sample


def _finding_title(case: PhantomCase) -> str:
    parts = []
    for name, options in case.meta.get("findings", {}).items():
        where = options.get("side") or options.get("lobe")
        parts.append(f"{name} ({where})" if where else name)
    return ", ".join(parts) or "No Finding"


def save_phantom_gallery(
    cases: Sequence[PhantomCase],
    path: str | Path,
    *,
    columns: int | None = None,
    panel_inches: float = 3.2,
    dpi: int = 120,
    contour_color: str = "#ff8c00",
) -> Path:
    """A grid of phantoms with their lung contours outlined and their findings as titles.

    Args:
        cases: phantoms to show (any sizes).
        path: output image (PNG, PDF, ... by suffix); its folder is created.
        columns: panels per row (default: up to 4).

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not cases:
        raise ValueError("save_phantom_gallery needs at least one case")
    columns = columns or min(4, len(cases))
    rows = math.ceil(len(cases) / columns)
    aspect = cases[0].image.shape[0] / cases[0].image.shape[1]
    figure = Figure(figsize=(columns * panel_inches, rows * (panel_inches * aspect + 0.35)))
    FigureCanvasAgg(figure)
    for index, case in enumerate(cases):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.imshow(case.image, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        axis.contour(case.lung_mask, levels=[0.5], colors=contour_color, linewidths=0.9)
        axis.set_title(f"seed {case.meta['seed']}: {_finding_title(case)}", fontsize=7.5, wrap=True)
        axis.set_axis_off()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
