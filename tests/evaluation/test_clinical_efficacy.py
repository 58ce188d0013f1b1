"""Clinical-efficacy precision/recall/F1 under the R2Gen (micro/macro) and PromptMRG (example) conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrfm.evaluation.chexpert_labeler import CHEXPERT_OBSERVATIONS
from cxrfm.evaluation.clinical import binarize_labels, clinical_efficacy, clinical_efficacy_from_reports, cohen_kappa

NAN = math.nan


def labels(**values) -> list[float]:
    row = [NAN] * len(CHEXPERT_OBSERVATIONS)
    for key, value in values.items():
        row[CHEXPERT_OBSERVATIONS.index(key.replace("_", " "))] = value
    return row


def test_hand_computed_scores_for_every_convention():
    predicted = np.array([
        labels(Cardiomegaly=1, Edema=1, Pneumothorax=0),
        labels(Pleural_Effusion=1, Atelectasis=-1),  # uncertain counts as not positive
    ])
    reference = np.array([
        labels(Cardiomegaly=1),
        labels(Pleural_Effusion=1, Atelectasis=1),
    ])
    scores = clinical_efficacy(predicted, reference)
    # Pooled: tp 2 (cardiomegaly, effusion), fp 1 (edema), fn 1 (atelectasis).
    assert scores["precision_micro"] == pytest.approx(2 / 3)
    assert scores["recall_micro"] == pytest.approx(2 / 3)
    assert scores["f1_micro"] == pytest.approx(2 / 3)
    # Per label: cardiomegaly and effusion 1/1/1, every other label 0 -> means over 14 labels.
    assert scores["precision_macro"] == pytest.approx(2 / 14)
    assert scores["recall_macro"] == pytest.approx(2 / 14)
    assert scores["f1_macro"] == pytest.approx(2 / 14)
    # Per report: (P, R, F1) = (1/2, 1, 2/3) and (1, 1/2, 2/3).
    assert scores["precision_example"] == pytest.approx(0.75)
    assert scores["recall_example"] == pytest.approx(0.75)
    assert scores["f1_example"] == pytest.approx(2 / 3)
    per_label = scores["per_label"]
    assert per_label["Edema"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert per_label["Atelectasis"]["support"] == 1 and per_label["Cardiomegaly"]["f1"] == 1.0


def test_empty_reports_score_zero_and_shapes_are_checked():
    empty = np.full((2, 14), NAN)
    scores = clinical_efficacy(empty, empty)
    assert scores["f1_micro"] == 0.0 and scores["f1_example"] == 0.0
    with pytest.raises(ValueError, match="must both be"):
        clinical_efficacy(np.zeros((2, 13)), np.zeros((2, 13)))
    assert binarize_labels(np.array([[1, 0, -1, NAN]])).tolist() == [[True, False, False, False]]


def test_from_reports_uses_the_labeler():
    scores = clinical_efficacy_from_reports(
        ["Mild cardiomegaly. No pleural effusion.", "No acute abnormality."],
        ["The heart is enlarged. Small left pleural effusion.", "Normal chest."],
    )
    # Report 1: cardiomegaly right, effusion missed; report 2: No Finding on both sides.
    assert scores["precision_micro"] == pytest.approx(1.0)
    assert scores["recall_micro"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        clinical_efficacy_from_reports(["a", "b"], ["a"])


def test_cohen_kappa():
    assert cohen_kappa(np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0])) == 1.0
    assert cohen_kappa(np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1])) == -1.0
    # Observed 0.75, expected 0.5 -> 0.5.
    assert cohen_kappa(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(0.5)
    assert cohen_kappa(np.zeros(3), np.zeros(3)) == 1.0
