"""What a phantom is drawn with and what comes out of it.

The findings the phantom can draw (:data:`SUPPORTED_FINDINGS`, with the CheXpert parent labels
set alongside), :data:`DEFAULT_FINDING_PROBS`, the anatomical unit :data:`UNIT_CM`, the drawing
options :class:`PhantomConfig`, the result :class:`PhantomCase`, and the checks on sizes and seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cxrfm.data.labels import FINDINGS
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
        self.size = check_size(self.size)
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


def check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError("size", f"must be (H, W), got {size!r}", "PhantomConfig") from None
    if height < 16 or width < 16:
        raise ConfigError("size", f"must be at least 16 x 16, got {(height, width)}", "PhantomConfig")
    return height, width


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


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
