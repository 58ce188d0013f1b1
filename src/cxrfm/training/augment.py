"""Batched, per-sample-keyed augmentation for pretraining (runs on the training device).

Every random number comes from :func:`~cxrfm.training.randomness.hashed_uniform` keyed by
``(seed, epoch, sample id)``, so a sample is augmented the same way whatever rank or batch
position it lands on, and again after a resume. The work is one ``affine_grid`` + ``grid_sample``
for the whole batch (no per-sample Python loop), on the GPU when training runs there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

UNIFORMS_PER_SAMPLE = 6


def random_resized_crop(
    images: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop a random area of each image and resize it back to the full size.

    Args:
        images: ``(B, 1, H, W)``.
        uniforms: ``(B, >=4)`` uniform ``[0, 1)`` numbers: area, aspect, x and y position.
        scale: crop area as a fraction of the image area (MAE/medical_mae use 0.5-1.0 for CXRs,
            keeping most of the thorax).
        ratio: crop aspect ratio range (width / height, relative to the image's).
        masks: ``(B, 1, H, W)`` lung masks cropped identically (nearest), NaN rows stay NaN.

    Returns:
        images ``(B, 1, H, W)`` (bilinear) and masks (or None).
    """
    dtype = images.dtype
    uniforms = uniforms.to(device=images.device, dtype=torch.float32)
    area = scale[0] + (scale[1] - scale[0]) * uniforms[:, 0]
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniforms[:, 1])
    # Crop width/height as fractions of the image side; clipped so the crop stays inside.
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # In affine_grid's normalised coordinates the image spans [-1, 1]; a crop of relative size w
    # has its centre anywhere in [-(1 - w), 1 - w].
    centre_x = (2 * uniforms[:, 2] - 1) * (1 - width)
    centre_y = (2 * uniforms[:, 3] - 1) * (1 - height)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0] = width
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    cropped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    cropped_masks = None
    if masks is not None:
        cropped_masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="border", align_corners=False)
    return cropped.to(dtype), cropped_masks


def intensity_jitter(images: torch.Tensor, uniforms: torch.Tensor, strength: float) -> torch.Tensor:
    """Contrast and brightness each scaled by ``1 ± strength`` / shifted by ``± strength``, clamped to [0, 1].

    Args:
        images: ``(B, 1, H, W)``; uniforms: ``(B, 2)``.
    """
    uniforms = uniforms.to(device=images.device, dtype=images.dtype)
    contrast = 1.0 + strength * (2 * uniforms[:, 0] - 1)
    brightness = strength * (2 * uniforms[:, 1] - 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    jittered = (images - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    return jittered.clamp(0.0, 1.0)
