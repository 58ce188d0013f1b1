"""Overlap metrics for binary masks: Dice and IoU, plus summary statistics.

Inputs are NumPy arrays or torch tensors of shape ``(..., H, W)``; values > 0.5 count as
foreground (so probabilities and {0, 1} masks both work). Scores are computed per mask over the
last two axes and returned with the leading axes kept (a float for a single ``(H, W)`` pair).

Empty-mask convention: when prediction and reference are both empty the masks agree perfectly,
so Dice = IoU = 1.0. When only one is empty the score is 0.0.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def _binary(mask) -> np.ndarray:
    if hasattr(mask, "detach"):  # torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask) > 0.5


def _overlap(prediction, reference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prediction, reference = _binary(prediction), _binary(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    if prediction.ndim < 2:
        raise ValueError(f"masks need at least 2 dimensions (H, W), got shape {prediction.shape}")
    axes = (-2, -1)
    intersection = np.logical_and(prediction, reference).sum(axis=axes).astype(np.float64)
    return intersection, prediction.sum(axis=axes).astype(np.float64), reference.sum(axis=axes).astype(np.float64)


def _finish(scores: np.ndarray):
    return float(scores) if scores.ndim == 0 else scores


def dice_score(prediction, reference):
    """Dice = 2|P∩R| / (|P| + |R|) per ``(H, W)`` mask; 1.0 when both are empty."""
    intersection, predicted, actual = _overlap(prediction, reference)
    total = predicted + actual
    scores = np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)
    return _finish(scores)


def iou_score(prediction, reference):
    """IoU (Jaccard) = |P∩R| / |P∪R| per ``(H, W)`` mask; 1.0 when both are empty."""
    intersection, predicted, actual = _overlap(prediction, reference)
    union = predicted + actual - intersection
    scores = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return _finish(scores)


def summarize(values: Iterable[float]) -> dict[str, float]:
    """``n``, ``mean``, ``std`` (sample, ddof=1; 0 for one value), ``median``, ``min``, ``max``."""
    array = np.asarray(list(values), dtype=np.float64).ravel()
    if array.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": int(array.size),
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def format_overlap_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table from ``{row name: {"dice": summary, "iou": summary}}``."""
    lines = [
        "| evaluation | n | Dice mean ± sd | Dice median | Dice min | IoU mean ± sd | IoU median |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, metrics in rows.items():
        dice, iou = metrics["dice"], metrics["iou"]
        lines.append(
            f"| {name} | {dice['n']} | {dice['mean']:.4f} ± {dice['std']:.4f} | {dice['median']:.4f} | "
            f"{dice['min']:.4f} | {iou['mean']:.4f} ± {iou['std']:.4f} | {iou['median']:.4f} |"
        )
    return "\n".join(lines)
