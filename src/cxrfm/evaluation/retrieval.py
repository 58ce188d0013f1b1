"""Cross-modal retrieval scores over a similarity matrix (image rows, report columns)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(similarity: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """R@k both ways for matched pairs ``(i, i)`` of an ``(N, N)`` similarity matrix.

    ``image_to_text_R@k``: share of rows whose own column ranks in the top k of the row;
    ``text_to_image_R@k`` the same over columns. Ties count against the match (its rank is the
    number of entries at least as similar, itself included), so a constant matrix scores 0 for
    every k < N.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1] or similarity.shape[0] < 1:
        raise ValueError(f"similarity must be a square (N, N) matrix, got {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity has non-finite entries")
    own = np.diagonal(similarity)
    rank_rows = (similarity >= own[:, None]).sum(1)  # 1 = best
    rank_columns = (similarity >= own[None, :]).sum(0)
    scores = {}
    for k in ks:
        scores[f"image_to_text_R@{k}"] = float((rank_rows <= k).mean())
        scores[f"text_to_image_R@{k}"] = float((rank_columns <= k).mean())
    return scores
