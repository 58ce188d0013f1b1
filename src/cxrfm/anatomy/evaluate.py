"""Lung-mask benchmarks: (image, reference mask) pairs from the dataset adapters, and Dice / IoU.

Two mask conventions meet here. OpenIST masks stop at the heart border; V7 masks (covid_chestxray)
include the lung behind the heart. A segmenter trained on one is penalised on the other for the
convention, not for finding the wrong lungs. So besides the raw score we report an "envelope"
score: both masks are replaced by the convex hull of each of their two lungs before comparing.
The hull of a lung spans its heart notch, so the retro-cardiac region a V7 mask includes is
(approximately) added to both sides the same way; the comparison then measures whether the outer
lung boundaries agree. It is a symmetric, documented transform, not a tuning of either mask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import convex_hull_image

from cxrfm.anatomy.classical import classical_lung_mask
from cxrfm.anatomy.postprocess import keep_largest_components
from cxrfm.anatomy.segmenter import LungSegmenter
from cxrfm.evaluation.segmentation import dice_score, format_overlap_table, iou_score, summarize

log = logging.getLogger(__name__)

DATASET_FOLDERS = {"openist": "lung_seg_openist", "covid": "covid_chestxray"}


@dataclass
class SegmentationPair:
    """One image with its reference mask at native size: ``image``, ``mask`` ``(1, H, W)`` float32."""

    image: torch.Tensor
    mask: torch.Tensor
    name: str
    meta: dict = field(default_factory=dict)


def segmentation_pairs(
    dataset: str, root: str | Path, split: str | None = "test", image_size: tuple[int, int] | None = None
) -> list[SegmentationPair]:
    """Pairs with a mask from ``openist``, ``covid`` (V7 masks) or ``manifest`` (a ``mask`` column)
    through ``cxrfm.data``; ``split`` None or "all" = every split. Rows without a mask are skipped."""
    from cxrfm.data.registry import DatasetSpec, build_dataset

    split = None if split in (None, "all") else split
    options = {"mask_source": "v7labs", "require_mask": True} if dataset == "covid" else {}
    spec = DatasetSpec(kind=dataset, root=str(root), options=options)
    samples = build_dataset(spec, split, image_size=image_size)
    pairs = []
    for index in range(len(samples)):
        sample = samples[index]
        if sample.lung_mask is None:
            continue
        name = sample.meta.get("study_id") or Path(str(sample.meta.get("path", index))).stem
        pairs.append(SegmentationPair(sample.image, sample.lung_mask, str(name), sample.meta))
    return pairs


def lung_envelope(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """Union of the convex hulls of the ``count`` largest components of a ``(H, W)`` mask (bool)."""
    mask = keep_largest_components(mask, count)
    labels, number = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    envelope = np.zeros(mask.shape, dtype=bool)
    for label in range(1, number + 1):
        envelope |= convex_hull_image(labels == label)
    return envelope


def evaluate_masks(
    predict: Callable[[torch.Tensor], np.ndarray], pairs: list[SegmentationPair], envelope: bool = False
) -> dict:
    """Score ``predict(image (1, 1, H, W)) -> (H, W) mask`` on every pair.

    Returns ``{"per_image": [{name, dice, iou[, dice_envelope, iou_envelope]}], "raw": {"dice":
    summary, "iou": summary}[, "envelope": {...}]}`` (summaries from :func:`summarize`).
    """
    rows = []
    for pair in pairs:
        prediction = np.asarray(predict(pair.image[None])) > 0.5
        reference = pair.mask[0].numpy() > 0.5
        row = {"name": pair.name, "dice": dice_score(prediction, reference), "iou": iou_score(prediction, reference)}
        if envelope:
            hull_prediction, hull_reference = lung_envelope(prediction), lung_envelope(reference)
            row["dice_envelope"] = dice_score(hull_prediction, hull_reference)
            row["iou_envelope"] = iou_score(hull_prediction, hull_reference)
        rows.append(row)
    result = {"per_image": rows, "raw": _summaries(rows, "")}
    if envelope:
        result["envelope"] = _summaries(rows, "_envelope")
    return result


def _summaries(rows: list[dict], suffix: str) -> dict:
    return {metric: summarize(row[metric + suffix] for row in rows) for metric in ("dice", "iou")}


def mask_predictor(
    method: str = "segmenter", segmenter: LungSegmenter | None = None, threshold: float = 0.5, keep_largest: int = 2
) -> Callable[[torch.Tensor], np.ndarray]:
    """``image (1, 1, H, W) -> (H, W)`` float32 mask, from the segmenter or the classical fallback."""
    if method == "classical":
        return lambda image: classical_lung_mask(image[0, 0].numpy())
    if segmenter is None:
        raise ValueError("method 'segmenter' needs a LungSegmenter")
    return lambda image: segmenter.predict_mask(image, threshold, keep_largest)[0, 0].cpu().numpy()


def evaluate_on_dataset(
    dataset: str,
    root: str | Path,
    split: str = "test",
    weights: str | Path | None = None,
    method: str = "segmenter",
    device: str = "cpu",
    json_path: str | Path | None = None,
) -> str:
    """Dice / IoU of the segmenter at ``weights`` (or the classical fallback) as a Markdown table.

    On ``covid`` the envelope score is added (see the module docstring). ``json_path`` receives the
    per-image scores and summaries.
    """
    segmenter = LungSegmenter.from_pretrained(weights, map_location=device) if method == "segmenter" else None
    pairs = segmentation_pairs(dataset, root, split)
    log.info("evaluating %s on %d %s/%s pairs", method, len(pairs), dataset, split)
    result = evaluate_masks(mask_predictor(method, segmenter), pairs, envelope=dataset == "covid")
    label = f"{method} on {dataset}/{split}"
    rows = {f"{label} (raw)": result["raw"]}
    if "envelope" in result:
        rows[f"{label} (lung envelopes)"] = result["envelope"]
    if json_path is not None:
        payload = {"dataset": dataset, "split": split, "method": method, "weights": str(weights), **result}
        Path(json_path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return format_overlap_table(rows)
