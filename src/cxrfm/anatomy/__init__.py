"""The chest contour: lung segmentation, its fallbacks, and per-patch inside fractions.

- :class:`LungSegmenter` (+ :class:`LungSegmenterConfig`, :data:`PRESETS`): a small U-Net;
  ``predict`` / ``predict_mask`` work on ``(B, 1, H, W)`` images of any size.
- :func:`classical_lung_mask`: a threshold-based fallback that needs no weights.
- :func:`reference_rectangle_mask`: the HD-MAE reference code's fixed rectangle (130 of 20x20).
- :func:`patch_inside_fraction`: ``(B, 1, H, W)`` mask -> ``(B, N)`` fraction inside per patch.
- :class:`ChestRegionProvider`: one call that gives the masks for a batch from any of the above.

The contour figures are in :mod:`cxrfm.figures.contours`.
"""

from cxrfm.anatomy.classical import classical_lung_mask
from cxrfm.anatomy.postprocess import clean_lung_mask, fill_holes, keep_largest_components
from cxrfm.anatomy.regions import ChestRegionProvider
from cxrfm.utils.patch_grid import patch_inside_fraction, reference_rectangle_mask
from cxrfm.anatomy.segmenter import PRESETS, LungSegmenter, LungSegmenterConfig

__all__ = [
    "PRESETS",
    "ChestRegionProvider",
    "LungSegmenter",
    "LungSegmenterConfig",
    "classical_lung_mask",
    "clean_lung_mask",
    "fill_holes",
    "keep_largest_components",
    "patch_inside_fraction",
    "reference_rectangle_mask",
]
