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

from cxrfm.anatomy.classical import classical_lung_mask
from cxrfm.anatomy.segmenter import LungSegmenter
from cxrfm.utils.patch_grid import reference_rectangle_mask

log = logging.getLogger(__name__)

RegionSource = Literal["segmenter", "classical", "rectangle", "given"]


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
