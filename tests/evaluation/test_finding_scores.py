"""Findings of generated reports against true labels (the labeler on the generated text)."""

from __future__ import annotations

import math

import pytest

from cxrfm.evaluation.report import finding_scores, metrics_table


def test_precision_recall_and_f1_per_finding_and_their_macro_mean():
    predictions = [
        "The heart is enlarged. There is a small left pleural effusion.",
        "The heart size is normal. No pleural effusion.",
        "The heart is enlarged. No pneumothorax.",
        "There is a right pneumothorax.",
    ]
    truth = {
        "Cardiomegaly": [1, 0, 0, 0],  # reported twice, once rightly: P 0.5, R 1
        "Pleural Effusion": [1, 1, 0, 0],  # reported once, rightly: P 1, R 0.5
        "Pneumothorax": [0, 0, 0, 1],  # "No pneumothorax" is not a report of one
        "Nodule": [0, 0, 0, 0],  # no true positive: left out of the macro mean
    }
    scores = finding_scores(predictions, truth)
    cardio, effusion, ptx = (scores["per_finding"][name] for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax"))
    assert (cardio["precision"], cardio["recall"], cardio["predicted"]) == (0.5, 1.0, 2)
    assert cardio["f1"] == pytest.approx(2 / 3)
    assert (effusion["precision"], effusion["recall"]) == (1.0, 0.5)
    assert ptx["f1"] == 1.0
    assert math.isnan(scores["per_finding"]["Nodule"]["recall"])
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)


def test_uncertain_mentions_are_not_reports_and_lengths_must_match():
    scores = finding_scores(["Cardiomegaly is not excluded."], {"Cardiomegaly": [1]})
    assert scores["per_finding"]["Cardiomegaly"]["predicted"] == 0 and scores["macro_f1"] == 0.0
    with pytest.raises(ValueError, match="2 labels for 1 reports"):
        finding_scores(["x"], {"Cardiomegaly": [1, 0]})


def test_the_metrics_table_shows_findings_and_distinct_reports():
    scores = {"nlg": {"BLEU-4": 0.2}, "num_reports": 4, "distinct_reports": 3,
              "findings": finding_scores(["The heart is enlarged."] * 4, {"Cardiomegaly": [1, 1, 0, 0]})}
    table = metrics_table(scores)
    assert "F1 Cardiomegaly" in table and "finding macro F1" in table and "reports: 4 (3 distinct)" in table
