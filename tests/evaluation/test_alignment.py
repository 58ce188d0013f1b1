"""UAR's alignment score: min-max over the whole similarity matrix, then matched pairs above 0.5."""

import math

import numpy as np
import pytest

from cxrfm.evaluation.alignment import alignment_score, cosine_similarity_matrix


def test_perfectly_matched_features_score_one_and_swapped_ones_zero():
    features = np.eye(5)
    assert alignment_score(features, features) == 1.0
    assert alignment_score(features, features[[1, 2, 3, 4, 0]]) == 0.0


def test_score_counts_pairs_in_the_upper_half_of_the_spanned_range():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    reports = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    similarity = cosine_similarity_matrix(images, reports)
    # cosines span 0 .. 1: pair 0 (1.0) and pair 2 (1.0) are above 0.5, pair 1 (0.0) is not
    assert similarity.min() == pytest.approx(0.0) and similarity.max() == pytest.approx(1.0)
    assert alignment_score(images, reports) == pytest.approx(2 / 3)
    # scaling a feature changes no cosine
    assert alignment_score(images * 7.0, reports) == pytest.approx(2 / 3)


def test_degenerate_inputs():
    assert math.isnan(alignment_score(np.ones((1, 3)), np.ones((1, 3))))
    assert math.isnan(alignment_score(np.ones((4, 3)), np.ones((4, 3))))  # constant matrix
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        alignment_score(np.ones((4, 3)), np.ones((3, 3)))
