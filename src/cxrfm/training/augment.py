"""The toolkit's one augmentation module: batched, per-sample-keyed, on the training device.

* :class:`AugmentSection` (``augment:`` of pretraining and classification): random resized crop
  and intensity jitter, applied by :func:`crop_and_jitter`.
* :class:`AffineAugmentSection` (``augment:`` of segmenter training): random affine of image and
  mask together plus gamma / contrast / brightness inside the image area, by :func:`augment_batch`.
  No flips: left and right lungs differ (heart on the left), so a mirrored chest is not plausible.

Every random number comes from :func:`~cxrfm.training.randomness.hashed_uniform` keyed by
``(seed, epoch, sample id)``, so a sample is augmented the same way whatever rank or batch
position it lands on, and again after a resume. The work is one ``affine_grid`` + ``grid_sample``
for the whole batch (no per-sample Python loop), on the GPU when training runs there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrfm.training.randomness import STREAM_AUGMENT, hashed_uniform

UNIFORMS_PER_SAMPLE = 6


@dataclass
class AugmentSection:
    """Random resized crop (area ``crop_scale``, aspect ``crop_ratio``) and intensity jitter."""

    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    intensity_jitter: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.random_resized_crop or bool(self.intensity_jitter)


def crop_and_jitter(
    section: AugmentSection,
    images: torch.Tensor,
    sample_ids: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``section``'s crop and jitter of ``images (B, 1, H, W)`` (and ``masks``, cropped alike),
    with random numbers keyed by ``(seed, epoch, sample id)``."""
    if not section.enabled:
        return images, masks
    uniforms = hashed_uniform(sample_ids.to(images.device), UNIFORMS_PER_SAMPLE, seed=seed, epoch=epoch, stream=STREAM_AUGMENT)
    if section.random_resized_crop:
        images, masks = random_resized_crop(images, uniforms[:, :4], scale=section.crop_scale, ratio=section.crop_ratio, masks=masks)
    if section.intensity_jitter:
        images = intensity_jitter(images, uniforms[:, 4:6], section.intensity_jitter)
    return images, masks


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


# --------------------------------------------------------------------- affine (segmenter)
@dataclass
class AffineAugmentSection:
    """Random transforms; ranges are symmetric around identity. ``enabled: false`` turns all off."""

    enabled: bool = True
    scale: tuple[float, float] = (0.85, 1.15)
    rotation_degrees: float = 10.0
    shift_fraction: float = 0.08
    gamma_log_range: float = 0.35
    contrast_range: float = 0.2
    brightness_range: float = 0.1


# Random numbers per sample: scale, rotation, shift x, shift y, gamma, contrast, brightness.
AUGMENT_UNIFORMS = 7


def _between(uniforms: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * uniforms


def random_affine(stack: torch.Tensor, config: AffineAugmentSection, uniforms: torch.Tensor) -> torch.Tensor:
    """Same random scale/rotation/shift for all channels of each sample of ``(B, C, H, W)``.

    ``uniforms``: ``(B, >=4)`` in ``[0, 1)`` (scale, rotation, shift x, shift y).
    """
    uniforms = uniforms.to(device=stack.device, dtype=torch.float32)
    scale = _between(uniforms[:, 0], *config.scale)
    angle = torch.deg2rad(_between(uniforms[:, 1], -config.rotation_degrees, config.rotation_degrees))
    # Normalised coordinates span [-1, 1], so a shift of f image widths is 2f.
    shift = _between(uniforms[:, 2:4], -config.shift_fraction, config.shift_fraction) * 2
    # affine_grid maps output coordinates to input ones, so zooming in by s means sampling at 1/s.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(stack), list(stack.shape), align_corners=False)
    return F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_intensity(
    images: torch.Tensor, valid: torch.Tensor, config: AffineAugmentSection, uniforms: torch.Tensor
) -> torch.Tensor:
    """Gamma, contrast and brightness per sample, applied inside the image area only (padding stays black).

    ``uniforms``: ``(B, 3)`` in ``[0, 1)`` (gamma, contrast, brightness).
    """
    uniforms = uniforms.to(device=images.device, dtype=images.dtype)
    shape = (images.shape[0], 1, 1, 1)
    gamma = torch.exp(_between(uniforms[:, 0], -config.gamma_log_range, config.gamma_log_range)).view(shape)
    contrast = (1 + _between(uniforms[:, 1], -config.contrast_range, config.contrast_range)).view(shape)
    brightness = _between(uniforms[:, 2], -config.brightness_range, config.brightness_range).view(shape)
    adjusted = images.clamp(0, 1) ** gamma
    mean = (adjusted * valid).sum(dim=(1, 2, 3), keepdim=True) / valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    adjusted = (adjusted - mean) * contrast + mean + brightness
    return adjusted.clamp(0, 1) * valid


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, config: AffineAugmentSection, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1, H, W)`` images/masks/valid and ``(B, AUGMENT_UNIFORMS)`` uniforms -> augmented images and binary masks."""
    if not config.enabled:
        return images, masks
    images = random_intensity(images, valid, config, uniforms[:, 4:7])
    warped = random_affine(torch.cat([images, masks], dim=1), config, uniforms[:, :4])
    return warped[:, :1].contiguous(), (warped[:, 1:] > 0.5).float()


def random_square_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """A random ``size x size`` window of each image: ``(B, C, H, W)`` -> ``(B, C, size, size)``."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the training images {(height, width)}")
    tops = torch.randint(0, height - size + 1, (images.shape[0],)).tolist()
    lefts = torch.randint(0, width - size + 1, (images.shape[0],)).tolist()
    return torch.stack([image[..., t : t + size, x : x + size] for image, t, x in zip(images, tops, lefts)])
