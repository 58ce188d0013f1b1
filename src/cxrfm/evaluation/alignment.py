"""UAR's alignment score (Li et al. 2023, Sec. 5.2 footnote 3) of paired image / report features.

"The portion of radiograph-report pairs whose cosine similarity of features is larger than 0.5
after min-max normalization." The normalisation is over the whole ``(N, N)`` matrix of cosine
similarities between every image and every report of the evaluated set (the paper's Fig. 4
heatmaps), so the score says how many matched pairs sit in the upper half of the range the model
spans; it is relative to the set, not an absolute similarity.
"""

from __future__ import annotations

import numpy as np


def cosine_similarity_matrix(image_features: np.ndarray, report_features: np.ndarray) -> np.ndarray:
    """``(N, d)``, ``(N, d)`` -> ``(N, N)`` cosine similarities (row: image i, column: report j)."""
    images = np.asarray(image_features, dtype=np.float64)
    reports = np.asarray(report_features, dtype=np.float64)
    if images.ndim != 2 or images.shape != reports.shape:
        raise ValueError(f"image and report features must both be (N, d), got {images.shape} and {reports.shape}")
    images = images / np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-12)
    reports = reports / np.maximum(np.linalg.norm(reports, axis=1, keepdims=True), 1e-12)
    return images @ reports.T


def alignment_score(image_features: np.ndarray, report_features: np.ndarray, threshold: float = 0.5) -> float:
    """Share of matched pairs (row i with row i) whose min-max-normalised cosine exceeds ``threshold``.

    NaN for fewer than two pairs or a constant similarity matrix (nothing to normalise).
    """
    similarity = cosine_similarity_matrix(image_features, report_features)
    if similarity.shape[0] < 2:
        return float("nan")
    low, high = similarity.min(), similarity.max()
    if high - low < 1e-12:
        return float("nan")
    normalised = (similarity - low) / (high - low)
    return float((np.diagonal(normalised) > threshold).mean())
