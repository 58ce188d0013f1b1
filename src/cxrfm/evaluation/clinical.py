"""Clinical efficacy (CE) of generated reports: precision / recall / F1 over the 14 CheXpert labels.

Both the generated and the reference reports are labelled (by default with the offline
:mod:`cxrfm.evaluation.chexpert_labeler`), then compared. The literature uses incompatible
conventions; this module computes two and names them in every key:

* ``*_micro`` / ``*_macro`` -- **R2Gen** (``compute_ce.py`` + ``modules/metrics.compute_mlc``):
  labels binarised with positive -> 1, uncertain -> 0, negative -> 0, blank -> 0; then sklearn's
  ``precision/recall/f1_score`` with ``average="micro"`` (true/false positives pooled over every
  report and label) and ``average="macro"`` (per-label scores, unweighted mean over the 14 labels;
  F1-macro is the mean of per-label F1s). A label with an empty denominator scores 0 (sklearn's
  ``zero_division`` default).
* ``*_example`` -- **PromptMRG** (``modules/metrics_clinical.py``): positives only (same
  binarisation); per report ``P = tp / (tp + fp)``, ``R = tp / (tp + fn)``,
  ``F1 = tp / (tp + (fp + fn) / 2)``, each 0 when its denominator is 0, averaged over reports.

Both include "No Finding" among the 14 labels, as the references do. RoentGen's f1chexbert is a
third convention (CheXbert labels) and is not computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrfm.evaluation.chexpert_labeler import CHEXPERT_OBSERVATIONS, label_reports


def binarize_labels(labels: np.ndarray) -> np.ndarray:
    """``1`` -> 1; ``0``, ``-1`` (uncertain) and NaN (blank) -> 0. ``(N, C)`` float -> ``(N, C)`` bool."""
    return np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1.0


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _f1(precision, recall):
    return _safe_divide(2 * np.asarray(precision) * np.asarray(recall), np.asarray(precision) + np.asarray(recall))


def clinical_efficacy(
    predicted_labels: np.ndarray,
    reference_labels: np.ndarray,
    observations: Sequence[str] = CHEXPERT_OBSERVATIONS,
) -> dict[str, float | dict[str, dict[str, float]]]:
    """CE scores from label arrays ``(N, C)`` (1 / 0 / -1 / NaN).

    Returns ``precision|recall|f1`` ``_micro``, ``_macro``, ``_example`` and ``per_label``:
    ``{label: {precision, recall, f1, support}}`` (support = reference positives).
    """
    predicted = binarize_labels(predicted_labels)
    reference = binarize_labels(reference_labels)
    if predicted.shape != reference.shape or predicted.ndim != 2 or predicted.shape[1] != len(observations):
        raise ValueError(
            f"label arrays must both be (N, {len(observations)}); got {predicted.shape} and {reference.shape}"
        )
    true_positive = predicted & reference
    false_positive = predicted & ~reference
    false_negative = ~predicted & reference

    tp, fp, fn = (m.sum(axis=0) for m in (true_positive, false_positive, false_negative))
    label_precision, label_recall = _safe_divide(tp, tp + fp), _safe_divide(tp, tp + fn)
    label_f1 = _f1(label_precision, label_recall)
    micro_precision = _safe_divide(tp.sum(), tp.sum() + fp.sum())
    micro_recall = _safe_divide(tp.sum(), tp.sum() + fn.sum())

    tp_e, fp_e, fn_e = (m.sum(axis=1) for m in (true_positive, false_positive, false_negative))
    return {
        "precision_micro": float(micro_precision),
        "recall_micro": float(micro_recall),
        "f1_micro": float(_f1(micro_precision, micro_recall)),
        "precision_macro": float(label_precision.mean()),
        "recall_macro": float(label_recall.mean()),
        "f1_macro": float(label_f1.mean()),
        "precision_example": float(_safe_divide(tp_e, tp_e + fp_e).mean()),
        "recall_example": float(_safe_divide(tp_e, tp_e + fn_e).mean()),
        "f1_example": float(_safe_divide(tp_e, tp_e + 0.5 * (fp_e + fn_e)).mean()),
        "per_label": {
            name: {
                "precision": float(label_precision[i]),
                "recall": float(label_recall[i]),
                "f1": float(label_f1[i]),
                "support": int(reference[:, i].sum()),
            }
            for i, name in enumerate(observations)
        },
    }


def clinical_efficacy_from_reports(
    predictions: Sequence[str], references: Sequence[str]
) -> dict[str, float | dict[str, dict[str, float]]]:
    """Label both report lists with the offline CheXpert-style labeler, then :func:`clinical_efficacy`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return clinical_efficacy(label_reports(predictions), label_reports(references))


def cohen_kappa(first: np.ndarray, second: np.ndarray) -> float:
    """Cohen's kappa of two binary ``(N,)`` ratings (1.0 when both are constant and equal)."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    observed = float((first == second).mean())
    p1, p2 = first.mean(), second.mean()
    expected = float(p1 * p2 + (1 - p1) * (1 - p2))
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)
