"""Per-patch inside fractions, the reference rectangle and the chest-region provider."""

import numpy as np
import pytest
import torch

from cxrfm.anatomy.regions import ChestRegionProvider
from cxrfm.utils.patch_grid import patch_inside_fraction, reference_rectangle_mask
from cxrfm.anatomy.segmenter import LungSegmenter, LungSegmenterConfig


def test_half_filled_image_gives_exact_fractions_in_row_major_order():
    mask = torch.zeros(2, 1, 16, 24)
    mask[0, :, :, :12] = 1  # left half of sample 0
    mask[1, :, 4:8, :] = 1  # sample 1: rows 4..7 only -> half of the top patch row
    fractions = patch_inside_fraction(mask, 8)  # grid 2 x 3
    assert fractions.shape == (2, 6)
    expected_left_half = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.5, 0.0])
    torch.testing.assert_close(fractions[0], expected_left_half)
    torch.testing.assert_close(fractions[1], torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0, 0.0]))


def test_non_square_patches_and_plain_2d_masks():
    mask = np.zeros((8, 32), dtype=np.float32)
    mask[:, :4] = 1
    fractions = patch_inside_fraction(mask, (4, 8))  # grid 2 x 4
    assert fractions.shape == (1, 8)
    torch.testing.assert_close(fractions[0], torch.tensor([0.5, 0, 0, 0, 0.5, 0, 0, 0]))


def test_order_matches_vit_patch_flattening():
    # A ViT flattens patches of a (B, C, H, W) image to (B, N) row by row: check against einops-free unfold.
    torch.manual_seed(0)
    mask = (torch.rand(3, 1, 12, 20) > 0.5).float()
    patches = mask.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, 1, 3, 5, 4, 4)
    expected = patches.mean(dim=(-1, -2)).flatten(1)
    torch.testing.assert_close(patch_inside_fraction(mask, 4), expected)


def test_sizes_not_divisible_by_the_patch_are_an_error():
    with pytest.raises(ValueError, match=r"\(30, 32\).*\(16, 16\)"):
        patch_inside_fraction(torch.zeros(1, 1, 30, 32), 16)


def test_reference_rectangle_has_130_inside_patches_on_20x20():
    grid = reference_rectangle_mask((20, 20))
    assert grid.shape == (20, 20)
    assert int(grid.sum()) == 130
    rows, columns = torch.nonzero(grid, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (6, 15)
    assert (columns.min().item(), columns.max().item()) == (3, 15)


def test_reference_rectangle_scales_to_pixels_like_the_patch_grid():
    pixels = reference_rectangle_mask((1280, 1280))
    fractions = patch_inside_fraction(pixels, 64)  # 20 x 20 patches of 64 px
    torch.testing.assert_close(fractions[0], reference_rectangle_mask((20, 20)).flatten())
    # A non-square grid scales each axis on its own: rows 12..31 of 40, columns 3..15 of 20.
    assert int(reference_rectangle_mask((40, 20)).sum()) == 20 * 13


def test_provider_rectangle_and_given_with_fallback():
    images = torch.rand(3, 1, 40, 40)
    rectangle = ChestRegionProvider("rectangle")(images)
    assert rectangle.shape == (3, 1, 40, 40)
    assert torch.equal(rectangle[1, 0], reference_rectangle_mask((40, 40)))

    given = torch.zeros(3, 1, 40, 40)
    given[0, :, :10] = 1
    given[2] = float("nan")  # sample 2 has no mask (as collate_samples marks it)
    provider = ChestRegionProvider("given", fallback="rectangle")
    masks = provider(images, given)
    assert torch.equal(masks[0], given[0])
    assert masks[1].sum() == 0
    assert torch.equal(masks[2, 0], reference_rectangle_mask((40, 40)))
    with pytest.raises(ValueError, match="no given mask"):
        ChestRegionProvider("given")(images, given)


def test_provider_segmenter_runs_without_gradients_and_returns_binary_masks():
    segmenter = LungSegmenter(LungSegmenterConfig(input_size=(32, 32), base_width=4, depth=2))
    provider = ChestRegionProvider("segmenter", segmenter)
    images = torch.rand(2, 1, 48, 64, requires_grad=True)
    masks = provider(images)
    assert masks.shape == (2, 1, 48, 64)
    assert not masks.requires_grad
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    fractions = patch_inside_fraction(masks, 16)
    assert fractions.shape == (2, 12)


def test_provider_configuration_errors():
    with pytest.raises(ValueError, match="needs a LungSegmenter"):
        ChestRegionProvider("segmenter")
    with pytest.raises(ValueError, match="unknown"):
        ChestRegionProvider("ellipse")
    with pytest.raises(ValueError, match="given_masks"):
        ChestRegionProvider("given")(torch.rand(1, 1, 8, 8))
