"""Multi-label classification metrics with bootstrap confidence intervals, validation thresholds
and label-efficiency subsets. Everything takes NumPy arrays; nothing here knows about models.

Conventions:

* ``probabilities`` and ``labels`` are ``(N, K)``: N images, K labels. A label entry counts only
  when it is exactly 0 or 1; NaN (not labelled) and -1 (uncertain) are left out of that label's
  scores (rows stay in for the other labels).
* AUROC of a label is undefined (NaN) when its scored entries hold a single class. The mean AUROC
  averages the labels where it is defined.
* Thresholds are chosen per label to maximise F1 on the *validation* split
  (:func:`best_f1_thresholds`) and then applied unchanged to the test split. The reference VTB code
  selected model and thresholds on the test set; never do that.
* Confidence intervals (:func:`bootstrap_metrics`): percentile bootstrap that resamples *images*
  (rows) with replacement, ``B = 1000`` by default, seeded. A resample in which a label has one
  class leaves that label's AUROC out of that resample (and out of that resample's mean); each
  interval reports how many resamples defined it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

METRICS = ("auroc", "f1", "accuracy")


# ------------------------------------------------------------------------------------ helpers
def _as_arrays(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if probabilities.ndim == 1:
        probabilities, labels = probabilities[:, None], labels.reshape(-1, 1)
    if probabilities.shape != labels.shape or probabilities.ndim != 2:
        raise ValueError(f"probabilities {probabilities.shape} and labels {labels.shape} must both be (N, K)")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or inf")
    return probabilities, labels


def _valid(labels: np.ndarray) -> np.ndarray:
    """Entries that are scored: exactly 0 or 1."""
    return (labels == 0) | (labels == 1)


# ------------------------------------------------------------------------------------- AUROC
def _auroc_along_rows(scores: np.ndarray, positives: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``(R, N)`` arrays (Mann-Whitney U with average ranks for ties).

    Invalid entries get score -inf: they take the lowest ranks, so a valid entry's rank among the
    valid ones is its rank minus the number of invalid entries in the row.
    """
    scores = np.where(valid, scores, -np.inf)
    ranks = rankdata(scores, axis=1) - (~valid).sum(axis=1, keepdims=True)
    positive = positives & valid
    num_positive = positive.sum(axis=1)
    num_negative = valid.sum(axis=1) - num_positive
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative)
    return np.where((num_positive > 0) & (num_negative > 0), auc, np.nan)


def auroc_per_label(probabilities, labels) -> np.ndarray:
    """``(K,)`` AUROC per label; NaN where the label's scored entries hold one class."""
    probabilities, labels = _as_arrays(probabilities, labels)
    return _auroc_along_rows(probabilities.T, labels.T == 1, _valid(labels).T)


# ---------------------------------------------------------------------------- F1 / accuracy
def _f1_and_accuracy(predicted: np.ndarray, labels: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """F1 and accuracy over ``axis`` of boolean ``predicted`` vs 0/1/NaN ``labels``.

    F1 is undefined (NaN) when a label has no positive and none is predicted (0/0 says nothing
    about the classifier); accuracy is NaN only when no entry is scored.
    """
    valid = _valid(labels)
    positive = labels == 1
    true_positive = (predicted & positive & valid).sum(axis=axis)
    false_positive = (predicted & ~positive & valid).sum(axis=axis)
    false_negative = (~predicted & positive & valid).sum(axis=axis)
    correct = ((predicted == positive) & valid).sum(axis=axis)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = 2 * true_positive + false_positive + false_negative
        f1 = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), np.nan)
        accuracy = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
    return f1, accuracy


def best_f1_thresholds(probabilities, labels, default: float = 0.5) -> np.ndarray:
    """``(K,)`` per-label thresholds that maximise F1 (predict positive when ``p >= threshold``).

    Call this on the VALIDATION split only. The threshold is the midpoint between the lowest
    probability still called positive and the next lower distinct probability, so it does not sit
    exactly on a validation score. Labels without a positive (or without a scored entry) in
    validation keep ``default``.
    """
    probabilities, labels = _as_arrays(probabilities, labels)
    thresholds = np.full(labels.shape[1], float(default))
    for k in range(labels.shape[1]):
        valid = _valid(labels[:, k])
        scores, positive = probabilities[valid, k], labels[valid, k] == 1
        if positive.sum() == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        scores, positive = scores[order], positive[order]
        # Cut after the last of each run of equal scores: all ties fall on the same side.
        last_of_run = np.r_[scores[1:] != scores[:-1], True]
        true_positive = np.cumsum(positive)[last_of_run]
        called = np.arange(1, len(scores) + 1)[last_of_run]
        f1 = 2 * true_positive / (called + positive.sum())
        best = int(np.argmax(f1))  # the first maximum: the highest threshold reaching the best F1
        cut_scores = scores[last_of_run]
        below = cut_scores[best + 1] if best + 1 < len(cut_scores) else max(cut_scores[best] - 1e-6, 0.0)
        thresholds[k] = (cut_scores[best] + below) / 2
    return thresholds


# ---------------------------------------------------------------------------------- metrics
@dataclass
class MetricSummary:
    """Point estimates (on all images) and bootstrap intervals.

    Attributes:
        label_names: the K labels.
        per_label: ``{"auroc"|"f1"|"accuracy": (K,) array}`` point estimates.
        mean: ``{"auroc"|"f1"|"accuracy": float}``: mean over labels where defined.
        per_label_ci / mean_ci: ``(low, high)`` arrays / tuples at ``confidence``.
        per_label_defined / mean_defined: resamples (of ``num_resamples``) in which the metric
            was defined (a label with one class in a resample has no AUROC there).
        support: ``(K,)`` positives and scored entries per label.
    """

    label_names: tuple[str, ...]
    num_images: int
    thresholds: np.ndarray
    per_label: dict[str, np.ndarray]
    mean: dict[str, float]
    per_label_ci: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    mean_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_label_defined: dict[str, np.ndarray] = field(default_factory=dict)
    mean_defined: dict[str, int] = field(default_factory=dict)
    positives: np.ndarray | None = None
    scored: np.ndarray | None = None
    num_resamples: int = 0
    confidence: float = 0.95

    def to_dict(self) -> dict:
        """Plain JSON-ready values (NaN -> None)."""

        def clean(value):
            value = float(value)
            return value if math.isfinite(value) else None

        out = {
            "num_images": self.num_images,
            "num_resamples": self.num_resamples,
            "confidence": self.confidence,
            "mean": {},
            "labels": {},
        }
        for metric in METRICS:
            low, high = self.mean_ci.get(metric, (math.nan, math.nan))
            out["mean"][metric] = {"value": clean(self.mean[metric]), "ci": [clean(low), clean(high)],
                                   "defined_resamples": self.mean_defined.get(metric)}
        for k, name in enumerate(self.label_names):
            entry = {"threshold": clean(self.thresholds[k])}
            if self.positives is not None:
                entry.update(positives=int(self.positives[k]), scored=int(self.scored[k]))
            for metric in METRICS:
                lows, highs = self.per_label_ci.get(metric, (None, None))
                entry[metric] = {
                    "value": clean(self.per_label[metric][k]),
                    "ci": [None if lows is None else clean(lows[k]), None if highs is None else clean(highs[k])],
                }
            out["labels"][name] = entry
        return out


def _point_metrics(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    predicted = probabilities >= thresholds[None, :]
    f1, accuracy = _f1_and_accuracy(predicted, labels, axis=0)
    return {"auroc": auroc_per_label(probabilities, labels), "f1": f1, "accuracy": accuracy}


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    defined = np.isfinite(values)
    count = defined.sum(axis=axis)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def classification_metrics(
    probabilities,
    labels,
    thresholds=None,
    label_names: Sequence[str] | None = None,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MetricSummary:
    """AUROC, F1 and accuracy per label and averaged, with percentile bootstrap intervals.

    Args:
        probabilities: ``(N, K)`` predicted probabilities.
        labels: ``(N, K)`` 1 / 0 (NaN or -1: not scored).
        thresholds: ``(K,)`` chosen on validation (:func:`best_f1_thresholds`); default 0.5.
        label_names: K names (default ``label_0`` ...).
        num_resamples: bootstrap resamples ``B`` (0: point estimates only).
        confidence: interval mass, e.g. 0.95 -> 2.5th and 97.5th percentiles.
        seed: seed of the resampling.
    """
    probabilities, labels = _as_arrays(probabilities, labels)
    num_images, num_labels = labels.shape
    thresholds = np.full(num_labels, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (num_labels,):
        raise ValueError(f"thresholds {thresholds.shape} must be ({num_labels},)")
    names = tuple(label_names) if label_names is not None else tuple(f"label_{k}" for k in range(num_labels))
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    per_label = _point_metrics(probabilities, labels, thresholds)
    summary = MetricSummary(
        label_names=names,
        num_images=num_images,
        thresholds=thresholds,
        per_label=per_label,
        mean={metric: float(_nanmean(values)) for metric, values in per_label.items()},
        positives=(labels == 1).sum(axis=0),
        scored=_valid(labels).sum(axis=0),
        num_resamples=int(num_resamples),
        confidence=confidence,
    )
    if num_resamples > 0 and num_images > 0:
        _add_bootstrap(summary, probabilities, labels, thresholds, num_resamples, confidence, seed)
    return summary


def bootstrap_resamples(probabilities, labels, thresholds, num_resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """``{metric: (B, K)}`` per-label metrics on ``B`` resamples of the images (NaN: undefined)."""
    probabilities, labels = _as_arrays(probabilities, labels)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, labels.shape[0], size=(num_resamples, labels.shape[0]))  # (B, N)
    sampled_probabilities = probabilities[rows]  # (B, N, K)
    sampled_labels = labels[rows]
    valid = _valid(sampled_labels)
    aurocs = np.stack(
        [_auroc_along_rows(sampled_probabilities[..., k], sampled_labels[..., k] == 1, valid[..., k]) for k in range(labels.shape[1])],
        axis=1,
    )
    f1, accuracy = _f1_and_accuracy(sampled_probabilities >= thresholds, sampled_labels, axis=1)
    return {"auroc": aurocs, "f1": f1, "accuracy": accuracy}


def _percentiles(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``(B, K)``: low and high percentiles over finite values, and their count."""
    tail = 100 * (1 - confidence) / 2
    lows, highs, counts = [], [], []
    for column in values.T:
        finite = column[np.isfinite(column)]
        counts.append(len(finite))
        if len(finite) == 0:
            lows.append(np.nan)
            highs.append(np.nan)
        else:
            lows.append(np.percentile(finite, tail))
            highs.append(np.percentile(finite, 100 - tail))
    return np.array(lows), np.array(highs), np.array(counts)


def _add_bootstrap(summary: MetricSummary, probabilities, labels, thresholds, num_resamples, confidence, seed) -> None:
    resampled = bootstrap_resamples(probabilities, labels, thresholds, num_resamples, seed)
    for metric, values in resampled.items():
        low, high, count = _percentiles(values, confidence)
        summary.per_label_ci[metric] = (low, high)
        summary.per_label_defined[metric] = count
        means = _nanmean(values, axis=1)[:, None]  # (B, 1): mean over labels defined in that resample
        mean_low, mean_high, mean_count = _percentiles(means, confidence)
        summary.mean_ci[metric] = (float(mean_low[0]), float(mean_high[0]))
        summary.mean_defined[metric] = int(mean_count[0])


# ---------------------------------------------------------------------------------- tables
def _cell(value: float, low: float | None = None, high: float | None = None) -> str:
    if not math.isfinite(value):
        return "n/a"
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def format_metric_table(summary: MetricSummary) -> str:
    """A Markdown table: one row per label and the mean; cells ``value [low, high]``."""
    percent = round(100 * summary.confidence)
    lines = [
        f"| label | positives / n | threshold | AUROC ({percent} % CI) | F1 ({percent} % CI) | accuracy ({percent} % CI) |",
        "|---|---|---|---|---|---|",
    ]
    for k, name in enumerate(summary.label_names):
        cells = []
        for metric in METRICS:
            lows, highs = summary.per_label_ci.get(metric, (None, None))
            cells.append(_cell(summary.per_label[metric][k], None if lows is None else lows[k], None if highs is None else highs[k]))
        support = f"{int(summary.positives[k])} / {int(summary.scored[k])}" if summary.positives is not None else ""
        lines.append(f"| {name} | {support} | {summary.thresholds[k]:.3f} | " + " | ".join(cells) + " |")
    cells = [_cell(summary.mean[m], *summary.mean_ci.get(m, (None, None))) for m in METRICS]
    lines.append(f"| **mean** | {summary.num_images} images | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------- label efficiency
def label_efficiency_subsets(
    labels,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    strata: Sequence | None = None,
    ensure_positive: bool = True,
) -> dict[float, np.ndarray]:
    """Nested, stratified training subsets for the label-efficiency protocol (1 % / 10 % / 100 %).

    How: every training image gets a sort key ``(position + u) / stratum size`` where ``position``
    is its place in a seeded shuffle of its stratum and ``u`` a seeded uniform. Sorting by the key
    interleaves the strata in proportion to their sizes, so *every prefix* of the order is a
    stratified sample, and the subset of fraction ``f`` is the first ``max(1, round(f * N))``
    images: 1 % ⊂ 10 % ⊂ 100 % by construction. With ``ensure_positive`` a label that has
    positives in the training split but none in a subset gets its first positive in the order
    added (so a subset can exceed its nominal size by at most one image per label); the additions
    are themselves nested.

    Args:
        labels: ``(N, K)`` training labels (1 positive; anything else is not a positive).
        fractions: in ``(0, 1]``.
        seed: the subsets are a function of ``(labels, strata, seed)`` only.
        strata: a key per image (e.g. the coarse label); default: the label combination
            (the tuple of positive labels).
        ensure_positive: add a positive for labels a subset lacks (when the split has one).

    Returns:
        ``{fraction: sorted int64 indices into the training split}``.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, K), got {labels.shape}")
    num_images = labels.shape[0]
    positive = labels == 1
    if strata is None:
        strata = [tuple(np.flatnonzero(row)) for row in positive]
    if len(strata) != num_images:
        raise ValueError(f"{len(strata)} strata keys for {num_images} images")
    order = _stratified_order(strata, seed)
    subsets = {}
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {fraction}")
        size = min(num_images, max(1, round(fraction * num_images)))
        chosen = set(order[:size].tolist())
        if ensure_positive:
            for k in range(labels.shape[1]):
                holders = positive[order, k]
                if holders.any() and not positive[list(chosen), k].any():
                    chosen.add(int(order[np.argmax(holders)]))
        subsets[float(fraction)] = np.array(sorted(chosen), dtype=np.int64)
    return subsets


def _stratified_order(strata: Sequence, seed: int) -> np.ndarray:
    """Image indices in an order whose every prefix is (approximately) stratified."""
    rng = np.random.default_rng(seed)
    keys = [repr(key) for key in strata]  # hashable and sortable, whatever the key type
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    sort_key = np.empty(len(keys))
    for key in sorted(groups):  # sorted: the draws do not depend on dict insertion order
        members = np.array(groups[key])
        shuffled = members[rng.permutation(len(members))]
        offsets = rng.uniform(size=len(members))
        sort_key[shuffled] = (np.arange(len(members)) + offsets) / len(members)
    return np.argsort(sort_key, kind="stable")


__all__ = [
    "METRICS",
    "MetricSummary",
    "auroc_per_label",
    "best_f1_thresholds",
    "bootstrap_resamples",
    "classification_metrics",
    "format_metric_table",
    "label_efficiency_subsets",
]
