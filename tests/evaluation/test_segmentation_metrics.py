"""Dice / IoU on hand-computed arrays, the empty-mask convention, batching and summaries."""

import math

import numpy as np
import pytest
import torch

from cxrfm.evaluation.segmentation import dice_score, format_overlap_table, iou_score, summarize


def _two_boxes():
    prediction = np.zeros((4, 6), dtype=np.float32)
    reference = np.zeros((4, 6), dtype=np.float32)
    prediction[0:2, 0:4] = 1  # 8 pixels
    reference[0:2, 2:6] = 1  # 8 pixels, 4 shared
    return prediction, reference


def test_dice_and_iou_match_hand_computed_values():
    prediction, reference = _two_boxes()
    assert dice_score(prediction, reference) == pytest.approx(2 * 4 / (8 + 8))  # 0.5
    assert iou_score(prediction, reference) == pytest.approx(4 / 12)


def test_identical_and_disjoint_masks():
    prediction, reference = _two_boxes()
    assert dice_score(reference, reference) == 1.0
    assert iou_score(reference, reference) == 1.0
    disjoint = np.zeros_like(reference)
    disjoint[3, :] = 1
    assert dice_score(disjoint, reference) == 0.0
    assert iou_score(disjoint, reference) == 0.0


def test_empty_mask_convention():
    empty = np.zeros((5, 5))
    full = np.ones((5, 5))
    # Both empty: perfect agreement. One empty: no overlap.
    assert dice_score(empty, empty) == 1.0
    assert iou_score(empty, empty) == 1.0
    assert dice_score(empty, full) == 0.0
    assert iou_score(full, empty) == 0.0


def test_probabilities_are_thresholded_at_half():
    reference = np.array([[1.0, 1.0, 0.0, 0.0]])
    prediction = np.array([[0.9, 0.51, 0.49, 0.1]])
    assert dice_score(prediction, reference) == 1.0


def test_batched_torch_inputs_give_one_score_per_mask():
    prediction, reference = _two_boxes()
    batch_prediction = torch.from_numpy(np.stack([prediction, reference]))[:, None]  # (2, 1, 4, 6)
    batch_reference = torch.from_numpy(np.stack([reference, reference]))[:, None]
    scores = dice_score(batch_prediction, batch_reference)
    assert scores.shape == (2, 1)
    np.testing.assert_allclose(scores[:, 0], [0.5, 1.0])
    np.testing.assert_allclose(iou_score(batch_prediction, batch_reference)[:, 0], [1 / 3, 1.0])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


def test_summarize_and_table():
    summary = summarize([0.9, 0.8, 1.0])
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(0.9)
    assert summary["std"] == pytest.approx(0.1)  # sample standard deviation
    assert summary["median"] == pytest.approx(0.9)
    assert (summary["min"], summary["max"]) == (0.8, 1.0)
    assert math.isnan(summarize([])["mean"])
    table = format_overlap_table({"model on test": {"dice": summary, "iou": summarize([0.5, 0.7])}})
    assert "| model on test | 3 | 0.9000 ± 0.1000 | 0.9000 | 0.8000 | 0.6000 ± 0.1414 | 0.6000 |" in table
