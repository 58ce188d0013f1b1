"""Tokenizer metrics: PSNR / SSIM of reconstructions and codebook usage."""

import math

import numpy as np
import pytest

from cxrfm.evaluation.tokenizer import codebook_usage, reconstruction_scores


def test_psnr_and_ssim_of_known_errors():
    original = np.full((1, 16, 16), 0.5)
    scores = reconstruction_scores(original, original.copy())
    assert math.isinf(scores["psnr"][0]) and scores["ssim"][0] == pytest.approx(1.0)
    shifted = reconstruction_scores(original, original + 0.1)  # MSE 0.01 -> 20 dB
    assert shifted["psnr"][0] == pytest.approx(20.0)
    noisy = reconstruction_scores(np.random.default_rng(0).random((1, 32, 32)), np.random.default_rng(1).random((1, 32, 32)))
    assert noisy["ssim"][0] < 0.2
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        reconstruction_scores(np.zeros((2, 4, 4)), np.zeros((1, 4, 4)))


def test_codebook_usage_perplexity_and_dead_codes():
    uniform = codebook_usage(np.arange(8).repeat(5), 8)
    assert uniform["perplexity"] == pytest.approx(8.0) and uniform["dead_codes"] == 0
    one = codebook_usage(np.zeros(50, dtype=int), 8)
    assert one["perplexity"] == pytest.approx(1.0) and one["dead_codes"] == 7 and one["dead_fraction"] == pytest.approx(7 / 8)
    half = codebook_usage(np.array([0, 1, 2, 3] * 3), 8)
    assert half["perplexity"] == pytest.approx(4.0) and half["used_codes"] == 4
