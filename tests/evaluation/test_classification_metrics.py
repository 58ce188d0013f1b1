"""Metrics with bootstrap CIs, validation thresholds and the label-efficiency subsets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from cxrfm.evaluation.classification import (
    auroc_per_label,
    best_f1_thresholds,
    bootstrap_resamples,
    classification_metrics,
    format_metric_table,
    label_efficiency_subsets,
)


def _scores(num_images: int, num_labels: int = 3, seed: int = 0, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(num_images, num_labels)) < 0.3).astype(float)
    logits = separation * labels + rng.normal(size=labels.shape)
    # Rounded to create ties, which AUROC must average like sklearn does.
    return np.round(1 / (1 + np.exp(-logits)), 2), labels


def test_auroc_matches_sklearn_with_ties_and_unscored_entries():
    probabilities, labels = _scores(200)
    labels[::7, 1] = np.nan  # not labelled
    labels[::11, 2] = -1  # uncertain
    ours = auroc_per_label(probabilities, labels)
    for k in range(3):
        keep = (labels[:, k] == 0) | (labels[:, k] == 1)
        assert ours[k] == pytest.approx(roc_auc_score(labels[keep, k], probabilities[keep, k]), abs=1e-12)


def test_auroc_is_nan_for_a_single_class_and_the_mean_skips_it():
    probabilities, labels = _scores(50)
    labels[:, 0] = 0
    aurocs = auroc_per_label(probabilities, labels)
    assert np.isnan(aurocs[0]) and np.isfinite(aurocs[1:]).all()
    summary = classification_metrics(probabilities, labels, num_resamples=0)
    assert summary.mean["auroc"] == pytest.approx(np.mean(aurocs[1:]))


def test_thresholds_maximise_f1_on_the_split_they_are_chosen_on():
    probabilities, labels = _scores(300, seed=1)
    thresholds = best_f1_thresholds(probabilities, labels)
    for k in range(3):
        chosen = f1_score(labels[:, k], probabilities[:, k] >= thresholds[k])
        brute_force = max(f1_score(labels[:, k], probabilities[:, k] >= t) for t in np.unique(probabilities[:, k]))
        assert chosen == pytest.approx(brute_force)
        # Not on a validation score: halfway to the next one down.
        assert not np.isclose(probabilities[:, k], thresholds[k]).any()
    no_positive = np.zeros_like(labels)
    assert best_f1_thresholds(probabilities, no_positive, default=0.5).tolist() == [0.5, 0.5, 0.5]


def test_point_metrics_match_sklearn_and_intervals_contain_them():
    probabilities, labels = _scores(150, seed=2)
    thresholds = np.array([0.4, 0.5, 0.6])
    summary = classification_metrics(probabilities, labels, thresholds, ["a", "b", "c"], num_resamples=300, seed=0)
    for k in range(3):
        predicted = probabilities[:, k] >= thresholds[k]
        assert summary.per_label["f1"][k] == pytest.approx(f1_score(labels[:, k], predicted))
        assert summary.per_label["accuracy"][k] == pytest.approx(np.mean(predicted == labels[:, k]))
    for metric in ("auroc", "f1", "accuracy"):
        low, high = summary.mean_ci[metric]
        assert low <= summary.mean[metric] <= high
        lows, highs = summary.per_label_ci[metric]
        assert (lows <= summary.per_label[metric] + 1e-12).all() and (summary.per_label[metric] <= highs + 1e-12).all()
    table = format_metric_table(summary)
    assert "| **mean** |" in table and f"{summary.mean['auroc']:.3f} [" in table
    assert summary.to_dict()["labels"]["b"]["auroc"]["value"] == pytest.approx(summary.per_label["auroc"][1])


def test_intervals_shrink_with_more_images_and_repeat_with_the_seed():
    widths = []
    for n in (60, 600):
        probabilities, labels = _scores(n, seed=3)
        summary = classification_metrics(probabilities, labels, num_resamples=400, seed=5)
        low, high = summary.mean_ci["auroc"]
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]
    probabilities, labels = _scores(80, seed=4)
    first = classification_metrics(probabilities, labels, num_resamples=200, seed=9).mean_ci
    again = classification_metrics(probabilities, labels, num_resamples=200, seed=9).mean_ci
    other = classification_metrics(probabilities, labels, num_resamples=200, seed=10).mean_ci
    assert first == again and first != other


def test_resamples_with_one_class_are_left_out_of_that_label_only():
    probabilities, labels = _scores(40, seed=6)
    labels[:, 0] = 0
    labels[3, 0] = 1  # one positive: many resamples miss it
    resampled = bootstrap_resamples(probabilities, labels, np.full(3, 0.5), num_resamples=500, seed=0)
    undefined = np.isnan(resampled["auroc"][:, 0])
    assert 0.2 < undefined.mean() < 0.5  # P(missing one row of 40 in 40 draws) = (39/40)^40 = 0.36
    assert np.isfinite(resampled["auroc"][:, 1:]).all()
    summary = classification_metrics(probabilities, labels, num_resamples=500, seed=0)
    assert summary.per_label_defined["auroc"][0] == (~undefined).sum()
    assert summary.mean_defined["auroc"] == 500  # the other labels define every resample's mean


def test_label_efficiency_subsets_are_deterministic_nested_stratified_and_have_positives():
    rng = np.random.default_rng(0)
    coarse = rng.choice(3, size=400, p=[0.77, 0.2, 0.03])
    labels = np.eye(3)[coarse]
    subsets = label_efficiency_subsets(labels, (0.01, 0.1, 1.0), seed=0)
    again = label_efficiency_subsets(labels, (0.01, 0.1, 1.0), seed=0)
    assert all(np.array_equal(subsets[f], again[f]) for f in (0.01, 0.1, 1.0))
    other_seed = label_efficiency_subsets(labels, (0.1,), seed=1)[0.1]
    assert not np.array_equal(subsets[0.1], other_seed)
    small, medium, full = subsets[0.01], subsets[0.1], subsets[1.0]
    assert set(small) <= set(medium) <= set(full) and len(full) == 400
    assert 40 <= len(medium) <= 40 + 3 and 4 <= len(small) <= 4 + 3
    for subset in (small, medium):
        assert (labels[subset] == 1).any(axis=0).all()  # every label has a positive
    # Stratified: the 10 % subset's class counts follow the split's shares (within rounding).
    expected = np.bincount(coarse, minlength=3) * 40 / 400
    assert np.abs(np.bincount(coarse[medium], minlength=3) - expected).max() <= 1.5
    by_key = label_efficiency_subsets(labels, (0.1,), seed=0, strata=list(coarse))[0.1]
    assert np.array_equal(by_key, subsets[0.1])  # the label combination is the coarse class here
