"""Validation helpers that several training tasks share."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from cxrfm.data.sample import collate_images


@torch.no_grad()
def reconstruction_error(reconstruct: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int,
                          device: torch.device) -> dict[str, float]:
    """Mean per-image MSE and the PSNR (dB, pixels in [0, 1]) of that mean, for ``reconstruct``
    ``(B, 1, H, W) -> (B, 1, H, W)`` over the images of ``dataset``."""
    total, count = 0.0, 0
    for images in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images):
        images = images.to(device)
        total += float(((reconstruct(images) - images) ** 2).mean(dim=(1, 2, 3)).sum())
        count += images.shape[0]
    mse = total / max(count, 1)
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12))}
