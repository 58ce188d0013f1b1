"""Contour + patch-grid overlay figures."""

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfm.figures.contours import save_contour_overlays


def _batch():
    images = torch.linspace(0, 1, 64 * 96).view(1, 1, 64, 96).repeat(2, 1, 1, 1)
    masks = torch.zeros(2, 1, 64, 96)
    masks[:, :, 16:48, 8:40] = 1
    masks[:, :, 16:48, 56:88] = 1
    return images, masks


def _red_pixels(path) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum())


def test_overlay_with_patch_grid_is_written(tmp_path):
    images, masks = _batch()
    path = save_contour_overlays(images, masks, tmp_path / "figs" / "overlay.png", patch_size=16)
    with Image.open(path) as figure:
        width, height = figure.size
    assert width > height  # two panels side by side per row... and two rows
    assert _red_pixels(path) > 50  # the lung contour is drawn in red


def test_overlay_without_grid_and_single_image(tmp_path):
    images, masks = _batch()
    path = save_contour_overlays(images[0, 0], masks[0, 0], tmp_path / "one.png")
    assert _red_pixels(path) > 20
    empty = save_contour_overlays(images[0], torch.zeros_like(masks[0]), tmp_path / "empty.png")
    assert _red_pixels(empty) == 0  # no contour for an empty mask


def test_overlay_shape_errors(tmp_path):
    images, masks = _batch()
    with pytest.raises(ValueError, match="differ"):
        save_contour_overlays(images, masks[:1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="divisible"):
        save_contour_overlays(images, masks, tmp_path / "x.png", patch_size=7)
