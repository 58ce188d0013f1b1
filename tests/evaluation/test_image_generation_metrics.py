"""Image-generation metrics on feature arrays: FD against its closed form, KID by hand,
controllability with its Wilson interval, mAUC without single-class labels, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrfm.evaluation.image_generation import (
    controllability,
    feature_statistics,
    format_generation_table,
    frechet_distance,
    frechet_distance_from_statistics,
    kernel_distance,
    mean_auroc,
    wilson_interval,
)


def exact_gaussian_sample(mean, std, num_rows: int, seed: int) -> np.ndarray:
    """``(N, D)`` rows whose sample mean is exactly ``mean`` and sample covariance (ddof 1)
    exactly ``diag(std²)``: whitened noise, then scaled and shifted."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(num_rows, len(mean)))
    noise -= noise.mean(axis=0)
    cholesky = np.linalg.cholesky(np.cov(noise, rowvar=False))
    white = noise @ np.linalg.inv(cholesky).T  # sample covariance = I
    return np.asarray(mean) + white * np.asarray(std)


def test_fd_of_identical_sets_is_zero_and_fd_is_symmetric():
    features = np.random.default_rng(0).normal(size=(200, 16))
    other = np.random.default_rng(1).normal(loc=0.3, size=(150, 16))
    assert abs(frechet_distance(features, features)) < 1e-8
    assert frechet_distance(features, other) == pytest.approx(frechet_distance(other, features), rel=1e-9)
    assert frechet_distance(features, other) > 0.1


def test_fd_of_two_gaussians_matches_the_closed_form_for_diagonal_covariances():
    mean_a, std_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 1.5])
    mean_b, std_b = np.array([1.0, 1.0, 0.0, -0.5]), np.array([3.0, 1.0, 0.5, 0.2])
    features_a = exact_gaussian_sample(mean_a, std_a, 300, seed=0)
    features_b = exact_gaussian_sample(mean_b, std_b, 250, seed=1)
    # ||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½); for diagonal S the root is diag(std_a std_b).
    closed_form = np.sum((mean_a - mean_b) ** 2) + np.sum(std_a**2 + std_b**2 - 2 * std_a * std_b)
    assert frechet_distance(features_a, features_b) == pytest.approx(closed_form, rel=1e-9)
    mu, sigma = feature_statistics(features_a)
    np.testing.assert_allclose(mu, mean_a, atol=1e-12)
    np.testing.assert_allclose(sigma, np.diag(std_a**2), atol=1e-10)
    assert frechet_distance_from_statistics(mean_a, np.diag(std_a**2), mean_b, np.diag(std_b**2)) == pytest.approx(closed_form)


def test_fd_with_fewer_images_than_dimensions_stays_finite():
    features = np.random.default_rng(0).normal(size=(5, 20))  # singular covariances: eps path
    assert abs(frechet_distance(features, features)) < 1e-4
    assert math.isfinite(frechet_distance(features, features + 1.0))


def test_kid_is_unbiased_mmd2_with_the_cubic_kernel_by_hand():
    # D = 1, k(x, y) = (x y + 1)³. K_aa off-diagonal: k(0, 1) = 1; K_bb: k(1, 2) = 27;
    # K_ab: k(0, 1) = k(0, 2) = 1, k(1, 1) = 8, k(1, 2) = 27 (sum 37).
    # MMD² = 2·1/2 + 2·27/2 - 2·37/4 = 9.5; every subset holds both rows, so sd = 0.
    assert kernel_distance([[0.0], [1.0]], [[1.0], [2.0]], num_subsets=5) == pytest.approx((9.5, 0.0))
    # D = 2 scales x·y by 1/2: K_aa, K_bb off-diagonal 1; K_ab = 1.5³ twice and 1 twice (sum 8.75).
    # MMD² = 1 + 1 - 2·8.75/4 = -2.375: the unbiased estimate is not clipped at zero.
    assert kernel_distance([[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]], num_subsets=5)[0] == pytest.approx(-2.375)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    features_a, features_b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same_mean, same_sd = kernel_distance(features_a, features_b, num_subsets=20, subset_size=300)
    shifted_mean, _ = kernel_distance(features_a, features_b + 0.5, num_subsets=20, subset_size=300)
    assert abs(same_mean) < 0.1 and same_sd > 0
    assert shifted_mean > 1.0 and shifted_mean > 10 * abs(same_mean)
    # Seeded: the same seed gives the same draws; subset_size is clipped to the smaller set.
    assert kernel_distance(features_a, features_b, num_subsets=3, seed=7) == kernel_distance(features_a, features_b, num_subsets=3, seed=7)
    assert kernel_distance(features_a[:10], features_b, num_subsets=2, subset_size=1000)[1] >= 0


@pytest.mark.parametrize(
    ("features_a", "features_b", "message"),
    [
        (np.zeros((4, 3)), np.zeros((4, 5)), "same feature network"),
        (np.zeros((1, 3)), np.zeros((4, 3)), "at least 2"),
        (np.full((4, 3), np.nan), np.zeros((4, 3)), "NaN or inf"),
        (np.zeros(4), np.zeros((4, 1)), r"\(N, D\)"),
    ],
)
def test_bad_features_are_clear_errors(features_a, features_b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(features_a, features_b)
    with pytest.raises(ValueError, match=message):
        kernel_distance(features_a, features_b, num_subsets=1)


def test_controllability_rate_and_wilson_interval_on_a_known_case():
    without = np.full(10, 0.3)
    with_finding = np.array([0.6] * 8 + [0.3, 0.1])  # 8 rises; a tie and a fall both fail
    result = controllability(without, with_finding)
    assert result["rate"] == 0.8 and result["pairs"] == 10 and result["successes"] == 8
    assert result["mean_shift"] == pytest.approx((8 * 0.3 + 0 - 0.2) / 10)
    # Wilson 95 % for 8 / 10 (z = 1.96): 0.4902 to 0.9433.
    assert result["ci_low"] == pytest.approx(0.49016, abs=1e-4)
    assert result["ci_high"] == pytest.approx(0.94332, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match=r"\(P,\)"):
        controllability(np.zeros(3), np.zeros(4))


def test_mean_auroc_leaves_out_single_class_labels_and_names_them():
    probabilities = np.array([[0.9, 0.2, 0.5], [0.8, 0.4, 0.5], [0.1, 0.6, 0.5], [0.3, 0.9, 0.5]])
    labels = np.array([[1, 0, 1], [1, 0, 1], [0, 1, 1], [0, np.nan, 1]])  # "Edema" is all positive
    result = mean_auroc(probabilities, labels, ["Cardiomegaly", "Effusion", "Edema"])
    assert result["per_label"]["Cardiomegaly"] == 1.0
    assert result["per_label"]["Effusion"] == 1.0  # the NaN row is not scored for that label
    assert math.isnan(result["per_label"]["Edema"])
    assert result["excluded"] == ["Edema"] and result["num_labels"] == 2 and result["mean"] == 1.0
    with pytest.raises(ValueError, match="label names"):
        mean_auroc(probabilities, labels, ["a", "b"])


def test_generation_table_names_the_feature_space_and_never_says_fid_for_cxr_features():
    rows = {
        "diff-cxr": {"fd": 12.345, "kid": (0.0123, 0.0011), "mauc": 0.712, "psnr": 14.2, "ssim": 0.41},
        "baseline": {"fd": 20.0, "kid": 0.03, "kid_sd": 0.002},
    }
    table = format_generation_table(rows, feature_space="cxrfm-vit (mae/encoder)")
    header = table.splitlines()[0]
    assert "FD-cxrfm-vit (mae/encoder)" in header and "FID" not in header
    assert "KID-cxrfm-vit (mae/encoder) ± sd" in header and "mAUC" in header and "SSIM" in header
    assert "| diff-cxr | 12.35 | 0.0123 ± 0.0011 | 0.712 | 14.20 | 0.410 |" in table
    assert "| baseline | 20.00 | 0.03 ± 0.002 | n/a | n/a | n/a |" in table
    assert "FID" in format_generation_table({"a": {"fd": 1.0}}, feature_space="inception (inception-2015-12-05.pt)")
    assert "PSNR" not in format_generation_table({"a": {"mauc": {"mean": 0.7, "excluded": []}}})
    assert "| a | 0.700 |" in format_generation_table({"a": {"mauc": {"mean": 0.7}}})
    with pytest.raises(ValueError, match="feature space"):
        format_generation_table({"a": {"fd": 1.0}})
    with pytest.raises(ValueError, match="different feature spaces"):
        format_generation_table({"a": {"fd": 1.0, "feature_space": "x"}, "b": {"fd": 2.0, "feature_space": "y"}})
