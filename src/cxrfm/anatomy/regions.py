"""The chest region per image and per patch: what context-aware MAE masking needs each batch.

``patch_inside_fraction(provider(images), patch_size)`` gives, for every ViT patch (row-major,
the order patch embeddings are flattened in), the fraction of its pixels inside the chest region.
The region comes from a :class:`ChestRegionProvider`: the U-Net segmenter, the classical fallback,
the reference code's fixed rectangle, or masks that came with the data.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cxrfm.anatomy.classical import classical_lung_mask
from cxrfm.anatomy.segmenter import LungSegmenter

log = logging.getLogger(__name__)

# The reference's rectangle in twentieths of the image: rows [6, 16), columns [3, 16) on its 20x20 grid.
REFERENCE_BOX_TWENTIETHS = (6, 16, 3, 16)  # top, bottom (exclusive), left, right (exclusive)

RegionSource = Literal["segmenter", "classical", "rectangle", "given"]


def reference_rectangle_mask(grid: tuple[int, int] = (20, 20)) -> torch.Tensor:
    """The HD-MAE reference code's fixed "chest contour" as a ``(H, W)`` float32 {0, 1} mask.

    The reference (``random_masking_yiliao``) marks ``patch_label[int(L*0.25)+1 : int(L*0.75)+1,
    int(L*0.125)+1 : int(L*0.75)+1]`` on its 20x20 grid, i.e. rows 6..15 and columns 3..15
    inclusive: 10 x 13 = 130 patches inside. (Its own count ``int(L*0.625*L*0.5)`` says 125, which
    disagrees with the slice; the slice is what masks, so 130 is reproduced here.)

    Scaling: the slice bounds are read as fractions of the image, rows [6/20, 16/20) and columns
    [3/20, 16/20), and ``grid`` may be any patch grid or pixel size: bounds are rounded to the
    nearest index (halves round up, in exact integer arithmetic). So a pixel mask at 1280x1280 pooled over 64x64 patches gives exactly the
    20x20 reference grid, and any size divisible by 20 keeps the same rectangle.
    """
    height, width = int(grid[0]), int(grid[1])
    top, bottom, left, right = (
        _scale_twentieths(value, size) for value, size in zip(REFERENCE_BOX_TWENTIETHS, (height, height, width, width))
    )
    mask = torch.zeros(height, width)
    mask[top:bottom, left:right] = 1
    return mask


def _scale_twentieths(twentieths: int, size: int) -> int:
    """round(twentieths / 20 * size) with halves rounded up, free of floating-point error."""
    return (2 * twentieths * size + 20) // 40


def patch_inside_fraction(mask: torch.Tensor | np.ndarray, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch's pixels inside the region (the maskers' ``inside_fraction``).

    Args:
        mask: ``(B, 1, H, W)`` or ``(H, W)`` with values in [0, 1] (soft masks give soft fractions).
            NaN-filled masks (samples without one, as :func:`collate_samples` makes them) give NaN
            rows, which the maskers count as all outside.
        patch_size: ``p`` or ``(ph, pw)``; ``H`` and ``W`` must be divisible by it.
    Returns:
        ``(B, N)`` float32 with ``N = (H / ph) * (W / pw)``, row-major over the patch grid (the
        order of ViT patch tokens); ``B = 1`` for an ``(H, W)`` mask.
    """
    mask = torch.as_tensor(mask)
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W) or (H, W), got shape {tuple(mask.shape)}")
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    height, width = mask.shape[-2:]
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"image size {(height, width)} is not divisible by patch size {patch}")
    fractions = F.avg_pool2d(mask.float(), kernel_size=patch, stride=patch)  # (B, 1, H/ph, W/pw)
    return fractions.flatten(1)


class ChestRegionProvider:
    """Chest-region masks for a batch: ``provider(images, given_masks=None) -> (B, 1, H, W)``.

    Sources:
        ``segmenter``: ``segmenter.predict_mask`` (moved to the images' device on first use,
        run under ``torch.no_grad``).
        ``classical``: :func:`classical_lung_mask` per image (CPU, NumPy; slow-ish at 1280 px).
        ``rectangle``: :func:`reference_rectangle_mask` at the image size (the reference code).
        ``given``: the ``given_masks`` passed in (e.g. ``CXRBatch.lung_masks``). Samples whose
        given mask is missing (NaN-filled, as :func:`collate_samples` does) get the ``fallback``
        source instead; with no fallback that is an error.
    Returned masks are float32 {0, 1} on the images' device.
    """

    def __init__(
        self,
        source: RegionSource = "segmenter",
        segmenter: LungSegmenter | None = None,
        *,
        threshold: float = 0.5,
        keep_largest: int = 2,
        fallback: RegionSource | None = None,
    ):
        if source not in ("segmenter", "classical", "rectangle", "given"):
            raise ValueError(f"unknown chest-region source {source!r}")
        if fallback == "given" or (fallback is not None and source != "given"):
            raise ValueError("fallback applies to source='given' only, and cannot itself be 'given'")
        if "segmenter" in (source, fallback) and segmenter is None:
            raise ValueError("source 'segmenter' needs a LungSegmenter (LungSegmenter.from_pretrained(dir))")
        self.source = source
        self.segmenter = segmenter
        self.threshold = threshold
        self.keep_largest = keep_largest
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"ChestRegionProvider(source={self.source!r}, fallback={self.fallback!r})"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, given_masks: torch.Tensor | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got shape {tuple(images.shape)}")
        if self.source != "given":
            return self._compute(self.source, images)
        if given_masks is None:
            raise ValueError("source 'given' needs given_masks (B, 1, H, W)")
        if given_masks.shape != images.shape:
            raise ValueError(f"given_masks shape {tuple(given_masks.shape)} != images shape {tuple(images.shape)}")
        masks = given_masks.to(device=images.device, dtype=torch.float32)
        missing = torch.isnan(masks).flatten(1).any(dim=1)
        if missing.any():
            if self.fallback is None:
                raise ValueError(f"{int(missing.sum())} sample(s) have no given mask and no fallback is set")
            masks = masks.clone()
            masks[missing] = self._compute(self.fallback, images[missing])
        return (masks > 0.5).float()

    def _compute(self, source: str, images: torch.Tensor) -> torch.Tensor:
        if source == "rectangle":
            rectangle = reference_rectangle_mask(tuple(images.shape[-2:])).to(images.device)
            return rectangle.expand(images.shape[0], 1, -1, -1).clone()
        if source == "classical":
            cpu_images = images.detach().float().cpu().numpy()
            masks = np.stack([classical_lung_mask(image[0]) for image in cpu_images])[:, None]
            return torch.from_numpy(masks).to(images.device)
        self.segmenter.to(images.device)
        return self.segmenter.predict_mask(images, threshold=self.threshold, keep_largest=self.keep_largest)
