"""How good is an image tokenizer: reconstruction PSNR / SSIM and codebook usage.

Takes arrays only (no model): ``originals`` / ``reconstructions`` ``(N, H, W)`` in [0, 1] and the
token ids the images were encoded to.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def reconstruction_scores(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, list[float]]:
    """Per-image ``{"psnr": [...], "ssim": [...]}`` (data range 1; PSNR in dB, inf for identical images)."""
    originals, reconstructions = np.asarray(originals, dtype=np.float64), np.asarray(reconstructions, dtype=np.float64)
    if originals.shape != reconstructions.shape or originals.ndim != 3:
        raise ValueError(f"originals and reconstructions must both be (N, H, W), got {originals.shape} and {reconstructions.shape}")
    psnr, ssim = [], []
    for original, reconstruction in zip(originals, reconstructions):
        if np.array_equal(original, reconstruction):
            psnr.append(float("inf"))
        else:
            psnr.append(float(peak_signal_noise_ratio(original, reconstruction, data_range=1.0)))
        ssim.append(float(structural_similarity(original, reconstruction, data_range=1.0)))
    return {"psnr": psnr, "ssim": ssim}


def codebook_usage(token_ids: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Perplexity of the code histogram (``codebook_size`` = every code equally used; 1 = one code),
    used and dead codes (never chosen) over all ``token_ids``."""
    counts = np.bincount(np.asarray(token_ids).ravel(), minlength=codebook_size)[:codebook_size].astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("no token ids")
    p = counts / counts.sum()
    nonzero = p[p > 0]
    used = int((counts > 0).sum())
    return {
        "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum())),
        "used_codes": used,
        "dead_codes": codebook_size - used,
        "dead_fraction": (codebook_size - used) / codebook_size,
    }
