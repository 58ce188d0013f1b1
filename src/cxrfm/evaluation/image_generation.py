"""How good are generated chest X-rays: distribution distances over feature arrays, mean AUROC of
an in-project classifier against the input reports' labels, and controllability. Everything takes
NumPy arrays; the features and probabilities come from :mod:`cxrfm.pipelines.image_features`.

Conventions:

* ``features`` are ``(N, D)``: one row per image, the same network for both sets. A distance is
  only meaningful within one feature space, so every reported number names it:
  **FD-<feature space>** (e.g. ``FD-cxrfm-vit (mae-run/encoder)``). "FID" means the Fréchet
  distance in the pool features of the 2015 TensorFlow Inception-v3 and is used only for those
  features (:class:`~cxrfm.pipelines.image_features.InceptionFeatures`, weights supplied by the
  user); the same holds for KID.
* Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule ...")
  between Gaussians fitted to the two sets (mean and unbiased covariance, ``ddof = 1``)::

      FD = ||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½)

  computed as pytorch-fid does: ``scipy.linalg.sqrtm``; when the product is singular (fewer
  images than dimensions, or constant features) and the root is not finite, ``eps · I`` is added
  to both covariances; a complex root whose diagonal has an imaginary part above ``1e-3`` is an
  error, below it the real part is kept. The result is not clipped (it can be ``-1e-12`` for
  identical sets).
* Kernel distance (KID; Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate
  of the squared MMD with the cubic polynomial kernel ``k(x, y) = (x·y / D + 1)³``::

      MMD² = 1/(m(m-1)) Σ_{i≠j} k(a_i, a_j) + 1/(m(m-1)) Σ_{i≠j} k(b_i, b_j) - 2/m² Σ_{i,j} k(a_i, b_j)

  averaged over ``num_subsets`` random subsets of ``m`` images of each set, drawn without
  replacement; ``sd`` is the standard deviation over subsets (``ddof = 0``). The draws follow
  torch-fidelity (``np.random.RandomState(seed)``, set a then set b per subset), so ``seed=2020``
  (its default) with the same ``m`` gives its numbers. The estimate is unbiased, so it can be
  slightly negative for sets from one distribution.
* mAUC: per-label AUROC of the classifier's probabilities on generated images against the labels
  of the reports they were generated from (:func:`cxrfm.evaluation.classification.auroc_per_label`:
  an entry counts only when it is exactly 0 or 1). A label whose scored entries hold one class
  has no AUROC (NaN); it is left out of the mean and listed in ``excluded``.
* Controllability: a pair is one report with and without one finding (either edit direction);
  it succeeds when the classifier's probability of that finding is *strictly* higher on the image
  generated from the report with the finding. The rate gets a Wilson score interval.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import linalg
from scipy.stats import norm

from cxrfm.evaluation.classification import auroc_per_label

log = logging.getLogger(__name__)

CONTROLLABILITY_TARGET = 0.8  # the bar: >= 80 % of pairs move the right way


# ------------------------------------------------------------------------------------ checks
def _features(features, name: str) -> np.ndarray:
    """``features`` as a finite float64 ``(N, D)`` array with ``N >= 2``, else a ValueError."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"{name} has {array.shape[0]} row(s); a covariance / kernel estimate needs at least 2 images")
    if array.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimension (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(array)).sum())} entries)")
    return array


def _feature_pair(features_a, features_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features_a has D = {a.shape[1]} and features_b D = {b.shape[1]}: both sets must come from the same feature network"
        )
    return a, b


# ------------------------------------------------------------------------- Fréchet distance
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (D,), sigma (D, D))``: mean and unbiased covariance (``ddof = 1``) of ``(N, D)`` features.

    Store these for a reference set to compare many generated sets against it.
    """
    features = _features(features, "features")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b, eps: float = 1e-6) -> float:
    """``||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½)`` (see the module docstring).

    Args:
        mu_a, mu_b: ``(D,)`` means.
        sigma_a, sigma_b: ``(D, D)`` covariances.
        eps: added to both diagonals when the square root of a singular product is not finite.
    Raises:
        ValueError: mismatched shapes, non-finite statistics, or a square root with an imaginary
            diagonal component above 1e-3 (the covariances are not positive semi-definite).
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, dtype=np.float64)), np.atleast_1d(np.asarray(mu_b, dtype=np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, dtype=np.float64)), np.atleast_2d(np.asarray(sigma_b, dtype=np.float64))
    dim = mu_a.shape[0]
    if mu_a.shape != (dim,) or mu_b.shape != (dim,) or sigma_a.shape != (dim, dim) or sigma_b.shape != (dim, dim):
        raise ValueError(
            f"statistics do not match: mu_a {mu_a.shape}, sigma_a {sigma_a.shape}, mu_b {mu_b.shape}, sigma_b {sigma_b.shape}"
        )
    for name, value in (("mu_a", mu_a), ("sigma_a", sigma_a), ("mu_b", mu_b), ("sigma_b", sigma_b)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf")
    difference = mu_a - mu_b
    covariance_mean = _sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covariance_mean).all():
        log.warning("FD: the covariance product is singular; adding %g to the diagonals", eps)
        offset = np.eye(dim) * eps
        covariance_mean = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covariance_mean):
        if not np.allclose(np.diagonal(covariance_mean).imag, 0, atol=1e-3):
            largest = float(np.max(np.abs(covariance_mean.imag)))
            raise ValueError(f"(S_a S_b)^½ has an imaginary component of {largest:.3g}: are both covariances positive semi-definite?")
        covariance_mean = covariance_mean.real
    return float(difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covariance_mean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its singular-matrix warning (the caller checks finiteness)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        with np.errstate(all="ignore"):
            return linalg.sqrtm(matrix)


def frechet_distance(features_a, features_b, eps: float = 1e-6) -> float:
    """Fréchet distance between ``(N, D)`` and ``(M, D)`` feature sets; report it as FD-<space>.

    ``||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½)`` with sample means and ``ddof = 1``
    covariances; symmetric in its arguments up to rounding. Call it FID only when the features are
    the Inception-v3 pool features.

    Raises:
        ValueError: not 2-D, fewer than 2 rows, NaN / inf entries, or different D.
    """
    features_a, features_b = _feature_pair(features_a, features_b)
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b), eps=eps)


# ------------------------------------------------------------------------ kernel distance
def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x·y / D + 1)³`` for every row pair: ``(m, D), (n, D) -> (m, n)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two ``(m, D)`` subsets with the cubic polynomial kernel."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_distance(
    features_a,
    features_b,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: ``(mean, sd)`` of the unbiased MMD² (cubic polynomial kernel) over random subsets.

    Args:
        features_a, features_b: ``(N, D)`` and ``(M, D)`` features of one network.
        num_subsets: subsets drawn (torch-fidelity's ``kid_subsets``).
        subset_size: images per subset from each set, clipped to ``min(N, M)`` (the usual 1000
            needs 1000 images per set; fewer makes the estimate noisier, and the sd shows it).
        seed: seed of the subset draws (torch-fidelity's default is 2020).
    Raises:
        ValueError: bad features (see :func:`frechet_distance`), ``num_subsets < 1`` or
            ``subset_size < 2``.
    """
    features_a, features_b = _feature_pair(features_a, features_b)
    if isinstance(num_subsets, bool) or int(num_subsets) != num_subsets or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive integer, got {num_subsets!r}")
    if isinstance(subset_size, bool) or int(subset_size) != subset_size or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    size = min(int(subset_size), features_a.shape[0], features_b.shape[0])
    if size < subset_size:
        log.info("KID: subset_size %d clipped to %d (the smaller set)", subset_size, size)
    rng = np.random.RandomState(seed)
    estimates = np.empty(int(num_subsets))
    for index in range(int(num_subsets)):
        subset_a = features_a[rng.choice(features_a.shape[0], size, replace=False)]
        subset_b = features_b[rng.choice(features_b.shape[0], size, replace=False)]
        estimates[index] = _unbiased_mmd2(subset_a, subset_b)
    return float(estimates.mean()), float(estimates.std())


# ------------------------------------------------------------------------ classifier scores
def mean_auroc(probabilities, labels, names: Sequence[str]) -> dict:
    """Mean AUROC of a classifier on generated images against the input reports' labels.

    Args:
        probabilities: ``(N, K)`` classifier probabilities on the generated images.
        labels: ``(N, K)`` labels of the reports they were generated from (1 / 0; NaN or -1 not
            scored).
        names: the K label names.

    Returns:
        ``{"mean": float (NaN when no label is defined), "per_label": {name: AUROC or NaN},
        "excluded": [names whose scored entries hold one class], "num_labels": K used in the mean}``.
    """
    names = tuple(names)
    per_label = auroc_per_label(probabilities, labels)
    if len(names) != per_label.shape[0]:
        raise ValueError(f"{len(names)} label names for {per_label.shape[0]} labels")
    defined = np.isfinite(per_label)
    excluded = [name for name, ok in zip(names, defined) if not ok]
    if excluded:
        log.info("mAUC: %d label(s) with a single class left out: %s", len(excluded), ", ".join(excluded))
    return {
        "mean": float(per_label[defined].mean()) if defined.any() else math.nan,
        "per_label": {name: float(value) for name, value in zip(names, per_label)},
        "excluded": excluded,
        "num_labels": int(defined.sum()),
    }


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion::

        (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n),  z = Φ⁻¹(1 - (1 - confidence) / 2)
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p, n = successes / trials, trials
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def controllability(prob_without, prob_with, *, confidence: float = 0.95) -> dict:
    """Share of edited-report pairs where the finding's probability rises when it is added.

    Args:
        prob_without: ``(P,)`` the classifier's probability of the edited finding on the image
            generated from the report *without* it.
        prob_with: ``(P,)`` the same on the image from the report *with* it. An "add" edit and a
            "remove" edit both give one (without, with) pair.
        confidence: mass of the Wilson interval.

    Returns:
        ``{"rate": successes / P (strictly higher with the finding; ties fail), "pairs": P,
        "successes", "mean_shift": mean(prob_with - prob_without), "ci_low", "ci_high"}``.
        The issue's bar is ``rate >= CONTROLLABILITY_TARGET`` (0.8).
    """
    without = np.asarray(prob_without, dtype=np.float64)
    with_finding = np.asarray(prob_with, dtype=np.float64)
    if without.ndim != 1 or without.shape != with_finding.shape:
        raise ValueError(f"prob_without {without.shape} and prob_with {with_finding.shape} must both be (P,)")
    if without.size == 0:
        raise ValueError("no pairs")
    if not (np.isfinite(without).all() and np.isfinite(with_finding).all()):
        raise ValueError("probabilities contain NaN or inf")
    successes = int((with_finding > without).sum())
    low, high = wilson_interval(successes, without.size, confidence)
    return {
        "rate": successes / without.size,
        "pairs": int(without.size),
        "successes": successes,
        "mean_shift": float((with_finding - without).mean()),
        "ci_low": low,
        "ci_high": high,
    }


# ---------------------------------------------------------------------------------- tables
def _number(value, digits: int = 3) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _fd_header(feature_space: str) -> str:
    return "FID" if feature_space.lower().startswith("inception") else f"FD-{feature_space}"


def _feature_space(rows: Mapping[str, Mapping], feature_space: str | None) -> str | None:
    spaces = {str(row["feature_space"]) for row in rows.values() if row.get("feature_space")}
    if feature_space is not None:
        spaces.add(str(feature_space))
    if len(spaces) > 1:
        raise ValueError(f"rows come from different feature spaces {sorted(spaces)}: distances in different spaces are not comparable")
    return next(iter(spaces), None)


def _kid_cell(row: Mapping) -> str:
    value = row.get("kid")
    if isinstance(value, (tuple, list)):
        value, sd = value
    else:
        sd = row.get("kid_sd")
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.4g}" if sd is None else f"{float(value):.4g} ± {float(sd):.2g}"


def format_generation_table(rows: Mapping[str, Mapping], feature_space: str | None = None) -> str:
    """A Markdown table of generation benchmarks: one row per system, columns present in any row.

    Args:
        rows: ``{system: {"fd", "kid" (a float with "kid_sd", or the ``(mean, sd)`` of
            :func:`kernel_distance`), "mauc" (a float or the dict of :func:`mean_auroc`), "psnr", "ssim", "controllability" (a rate or the
            dict of :func:`controllability`), "feature_space"}}``; every key optional.
        feature_space: the network that made the FD / KID features (e.g. the ``name`` of an
            :mod:`~cxrfm.pipelines.image_features` extractor), unless the rows say it. The FD
            column is headed ``FD-<feature space>`` ("FID" only for Inception features).
    Raises:
        ValueError: FD or KID without a feature space, or rows from different feature spaces.
    """
    space = _feature_space(rows, feature_space)
    present = {key for row in rows.values() for key, value in row.items() if value is not None}
    if present & {"fd", "kid"} and space is None:
        raise ValueError("FD / KID need the feature space that made them: pass feature_space= or a 'feature_space' per row")
    columns = []  # (header, cell function)
    if "fd" in present:
        columns.append((f"{_fd_header(space)} ↓", lambda row: _number(row.get("fd"), 2)))
    if "kid" in present:
        kid = "KID" if space.lower().startswith("inception") else f"KID-{space}"
        columns.append((f"{kid} ± sd ↓", _kid_cell))
    if "mauc" in present:
        def auroc(row):
            value = row.get("mauc")
            return _number(value.get("mean") if isinstance(value, Mapping) else value)

        columns.append(("mAUC ↑", auroc))
    if "psnr" in present:
        columns.append(("PSNR (dB) ↑", lambda row: _number(row.get("psnr"), 2)))
    if "ssim" in present:
        columns.append(("SSIM ↑", lambda row: _number(row.get("ssim"))))
    if "controllability" in present:
        def control(row):
            value = row.get("controllability")
            return _number(value.get("rate") if isinstance(value, Mapping) else value)

        columns.append(("controllability ↑", control))
    lines = ["| system | " + " | ".join(header for header, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for system, row in rows.items():
        lines.append(f"| {system} | " + " | ".join(cell(row) for _, cell in columns) + " |")
    return "\n".join(lines)


__all__ = [
    "CONTROLLABILITY_TARGET",
    "controllability",
    "feature_statistics",
    "format_generation_table",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "kernel_distance",
    "mean_auroc",
    "wilson_interval",
]
