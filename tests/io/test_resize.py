"""resize_image / resize_mask / fit_geometry on NumPy and torch, any (H, W) target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfm.io import resize_image, resize_mask
from cxrfm.io.image import fit_geometry

# (input size, output size): landscape/portrait into square, wide and tall targets, up and down.
SIZE_PAIRS = [
    ((40, 50), (32, 32)),
    ((50, 40), (32, 32)),
    ((40, 50), (32, 64)),
    ((40, 50), (64, 32)),
    ((30, 30), (20, 50)),
    ((30, 30), (50, 20)),
    ((10, 16), (64, 48)),
    ((17, 23), (17, 23)),
]


@pytest.mark.parametrize(
    ("in_size", "out_size", "expected"),
    [
        ((400, 500), (256, 256), (0.512, (25, 0), (205, 256))),
        ((500, 400), (100, 300), (0.2, (0, 110), (100, 80))),
        ((10, 10), (20, 40), (2.0, (0, 10), (20, 20))),
        ((64, 32), (64, 32), (1.0, (0, 0), (64, 32))),
        ((1, 1000), (8, 8), (0.008, (3, 0), (1, 8))),  # never shrinks a side to 0 pixels
    ],
)
def test_fit_geometry_values(in_size, out_size, expected):
    scale, offset, new_size = fit_geometry(in_size, out_size)
    assert scale == pytest.approx(expected[0])
    assert (offset, new_size) == expected[1:]


@pytest.mark.parametrize(("in_size", "out_size"), SIZE_PAIRS)
@pytest.mark.parametrize("interpolation", ["area", "bilinear", "nearest"])
def test_pad_puts_image_where_fit_geometry_says(in_size, out_size, interpolation):
    _, (top, left), (new_height, new_width) = fit_geometry(in_size, out_size)
    # One side fills the canvas; the content is centred.
    assert new_height == out_size[0] or new_width == out_size[1]
    assert abs(top - (out_size[0] - new_height - top)) <= 1 and abs(left - (out_size[1] - new_width - left)) <= 1
    ones = np.ones(in_size, np.float32)
    resized = resize_image(ones, out_size, mode="pad", interpolation=interpolation)
    assert isinstance(resized, np.ndarray) and resized.dtype == np.float32 and resized.shape == out_size
    expected = np.zeros(out_size, np.float32)
    expected[top : top + new_height, left : left + new_width] = 1.0
    np.testing.assert_allclose(resized, expected, atol=1e-6)


@pytest.mark.parametrize(("in_size", "out_size"), SIZE_PAIRS)
def test_stretch_fills_the_target(in_size, out_size):
    image = torch.rand(in_size, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    resized = resize_image(image, out_size, mode="stretch")
    assert resized.shape == out_size
    # Area / bilinear are averaging filters: no new extremes, mean roughly kept.
    assert resized.min() >= image.min() - 1e-6 and resized.max() <= image.max() + 1e-6
    assert resized.mean().item() == pytest.approx(image.mean().item(), abs=0.02)


def test_area_downscale_averages_blocks():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    resized = resize_image(image, (2, 2), mode="stretch", interpolation="area")
    np.testing.assert_array_equal(resized, [[2.5, 4.5], [10.5, 12.5]])


def test_nearest_keeps_the_value_set():
    labels = np.random.default_rng(0).integers(0, 4, size=(13, 7)).astype(np.float32)
    resized = resize_image(labels, (29, 31), mode="stretch", interpolation="nearest")
    assert set(np.unique(resized)) <= {0.0, 1.0, 2.0, 3.0}


def test_numpy_and_torch_batches_agree_and_keep_type():
    generator = torch.Generator().manual_seed(1)
    batch = torch.rand(3, 1, 40, 50, generator=generator, dtype=torch.float64)
    resized = resize_image(batch, (24, 36), mode="pad", interpolation="bilinear")
    assert resized.shape == (3, 1, 24, 36) and resized.dtype == torch.float64
    for index in range(3):
        single = resize_image(batch[index, 0].numpy(), (24, 36), mode="pad", interpolation="bilinear")
        np.testing.assert_allclose(single, resized[index, 0].numpy(), atol=1e-12)


def test_integer_input_is_rounded_back_to_its_dtype():
    image = np.full((8, 8), 200, np.uint8)
    resized = resize_image(image, (4, 6), mode="pad")
    assert resized.dtype == np.uint8
    assert set(np.unique(resized)) == {0, 200}


def test_a_bright_pixel_follows_the_geometry():
    image = np.zeros((40, 80), np.float32)
    image[10:12, 60:62] = 1.0  # centroid at index (10.5, 60.5)
    out_size = (64, 64)
    _, (top, left), (new_height, new_width) = fit_geometry(image.shape, out_size)
    resized = resize_image(image, out_size, mode="pad", interpolation="bilinear")
    rows, cols = np.indices(out_size)
    centre_y = (rows * resized).sum() / resized.sum()
    centre_x = (cols * resized).sum() / resized.sum()
    # Index coordinates map as (y + 0.5) * new / in - 0.5 (align_corners=False convention).
    assert centre_y == pytest.approx(top + (10.5 + 0.5) * new_height / 40 - 0.5, abs=0.1)
    assert centre_x == pytest.approx(left + (60.5 + 0.5) * new_width / 80 - 0.5, abs=0.1)


@pytest.mark.parametrize(("in_size", "out_size"), SIZE_PAIRS)
def test_resize_mask_stays_binary_and_keeps_area(in_size, out_size):
    rows, cols = np.indices(in_size)
    disc = (((rows - in_size[0] / 2) / in_size[0]) ** 2 + ((cols - in_size[1] / 2) / in_size[1]) ** 2) < 0.1
    mask = disc.astype(np.uint8)
    resized = resize_mask(mask, out_size, mode="stretch")
    assert resized.dtype == np.float32 and resized.shape == out_size
    assert set(np.unique(resized)) <= {0.0, 1.0}
    assert resized.mean() == pytest.approx(mask.mean(), abs=0.04)


def test_resize_mask_padding_matches_resize_image():
    mask = torch.ones(2, 1, 30, 60)
    resized = resize_mask(mask, (48, 48), mode="pad")
    _, (top, left), (new_height, new_width) = fit_geometry((30, 60), (48, 48))
    expected = torch.zeros(2, 1, 48, 48)
    expected[..., top : top + new_height, left : left + new_width] = 1.0
    assert resized.dtype == torch.float32
    torch.testing.assert_close(resized, expected, atol=0, rtol=0)


def test_resize_mask_from_bool_and_soft_masks():
    hard = np.zeros((4, 4), bool)
    hard[:2, :2] = True
    np.testing.assert_array_equal(resize_mask(hard, (2, 2), mode="stretch"), [[1, 0], [0, 0]])
    soft = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)
    resized = resize_mask(soft, (2, 2), mode="stretch")
    assert resized.dtype == torch.float64
    torch.testing.assert_close(resized, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": (0, 4)}, ValueError),
        ({"size": (4,)}, ValueError),
        ({"size": (4, 4), "mode": "crop"}, ValueError),
        ({"size": (4, 4), "interpolation": "cubic"}, ValueError),
    ],
)
def test_resize_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        resize_image(np.zeros((8, 8), np.float32), **kwargs)
    with pytest.raises(ValueError, match="\\(..., H, W\\)"):
        resize_image(np.zeros(8, np.float32), (4, 4))
