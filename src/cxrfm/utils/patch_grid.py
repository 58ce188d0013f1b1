"""Patch-grid geometry shared by the maskers (models) and the chest-region code (anatomy).

Pure tensor arithmetic on masks and patch grids, with no model and no image library, so both sides
can use one definition: the per-patch inside fraction and the HD-MAE reference code's rectangle.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The reference's rectangle in twentieths of the image: rows [6, 16), columns [3, 16) on its 20x20 grid.
REFERENCE_BOX_TWENTIETHS = (6, 16, 3, 16)  # top, bottom (exclusive), left, right (exclusive)


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
