"""read_image / read_mask / write_image over formats, bit depths and Pillow modes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

from cxrfm.io import read_image, read_mask, write_image

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, size=(6, 9), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, size=(6, 9), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
LUMA = (RGB8 @ np.array([0.299, 0.587, 0.114])) / 255


def _min_max(values):
    values = np.asarray(values, dtype=np.float64)
    return (values - values.min()) / (values.max() - values.min())


def _save(path, image, **options):
    image.save(path, **options)
    return path


# name -> (writer(tmp_path) -> path, expected float image, tolerance)
CASES = {
    "png_L_8bit": (lambda d: _save(d / "a.png", Image.fromarray(GRAY8)), GRAY8 / 255, 0),
    "png_I16_16bit": (lambda d: _save(d / "a.png", Image.fromarray(GRAY16)), GRAY16 / 65535, 0),
    "tif_L_8bit": (lambda d: _save(d / "a.tif", Image.fromarray(GRAY8)), GRAY8 / 255, 0),
    "tif_I16_16bit": (lambda d: _save(d / "a.tif", Image.fromarray(GRAY16)), GRAY16 / 65535, 0),
    "tif_I16B_bigendian": (
        lambda d: _save(d / "a.tif", Image.frombytes("I;16B", (9, 6), GRAY16.astype(">u2").tobytes())),
        GRAY16 / 65535,
        0,
    ),
    "tif_I_int32_minmax": (
        lambda d: _save(d / "a.tif", Image.fromarray(GRAY16.astype(np.int32) - 40000)),
        _min_max(GRAY16),
        1e-6,
    ),
    "tif_F_in_range_unchanged": (
        lambda d: _save(d / "a.tif", Image.fromarray((GRAY16 / 65535).astype(np.float32))),
        GRAY16 / 65535,
        1e-7,
    ),
    "tif_F_out_of_range_minmax": (
        lambda d: _save(d / "a.tif", Image.fromarray(GRAY16.astype(np.float32) * 3 - 7)),
        _min_max(GRAY16),
        1e-6,
    ),
    "tif_lzw_16bit": (
        lambda d: _save(d / "a.tif", Image.fromarray(GRAY16), compression="tiff_lzw"),
        GRAY16 / 65535,
        0,
    ),
    "jpeg_L": (lambda d: _save(d / "a.jpg", Image.fromarray(GRAY8), quality=100), GRAY8 / 255, 0.03),
    "png_1bit": (lambda d: _save(d / "a.png", Image.fromarray(GRAY8 > 127)), GRAY8 > 127, 0),
    "png_rgb_gray": (
        lambda d: _save(d / "a.png", Image.fromarray(np.stack([GRAY8] * 3, axis=-1))),
        GRAY8 / 255,
        1e-6,
    ),
    "png_rgb_colour_luma": (lambda d: _save(d / "a.png", Image.fromarray(RGB8)), LUMA, 1e-6),
    "png_rgba_alpha_dropped": (
        lambda d: _save(d / "a.png", Image.fromarray(np.dstack([RGB8, np.zeros_like(GRAY8)]))),
        LUMA,
        1e-6,
    ),
    "png_LA_alpha_dropped": (
        lambda d: _save(d / "a.png", Image.fromarray(np.dstack([GRAY8, 255 - GRAY8]), mode="LA")),
        GRAY8 / 255,
        0,
    ),
    "png_P_palette": (
        lambda d: _save(d / "a.png", Image.fromarray(RGB8).quantize(colors=256, method=Image.Quantize.FASTOCTREE)),
        None,  # filled in by the test from Pillow's own palette expansion
        1e-6,
    ),
    "jpeg_CMYK": (lambda d: _save(d / "a.jpg", Image.fromarray(RGB8).convert("CMYK"), quality=100), None, 1e-6),
    "pgm_16bit": (lambda d: _save(d / "a.pgm", Image.fromarray(GRAY16)), GRAY16 / 65535, 0),
    "bmp_L": (lambda d: _save(d / "a.bmp", Image.fromarray(GRAY8)), GRAY8 / 255, 0),
    "npy_uint8": (lambda d: _npy(d, GRAY8), GRAY8 / 255, 0),
    "npy_uint16": (lambda d: _npy(d, GRAY16), GRAY16 / 65535, 0),
    "npy_bool": (lambda d: _npy(d, GRAY8 > 127), GRAY8 > 127, 0),
    "npy_float_in_range": (lambda d: _npy(d, GRAY16 / 65535), GRAY16 / 65535, 1e-7),
    "npy_int64_minmax": (lambda d: _npy(d, GRAY16.astype(np.int64) * -5), 1 - _min_max(GRAY16), 1e-6),
}


def _npy(directory, array):
    np.save(directory / "a.npy", array)
    return directory / "a.npy"


@pytest.mark.parametrize("case", list(CASES))
def test_read_image_formats(tmp_path, case):
    writer, expected, tolerance = CASES[case]
    path = writer(tmp_path)
    if expected is None:
        # Palette / CMYK: expected = BT.601 luma of Pillow's own conversion to RGB.
        with Image.open(path) as image:
            expected = (np.asarray(image.convert("RGB")) @ np.array([0.299, 0.587, 0.114])) / 255
    image = read_image(path)
    assert image.dtype == np.float32
    assert image.shape == (6, 9)
    assert image.flags.c_contiguous
    assert 0.0 <= image.min() and image.max() <= 1.0
    # Exact cases compare with the float32 value of the exact fraction.
    np.testing.assert_allclose(image, np.asarray(expected, dtype=np.float32), atol=tolerance, rtol=0)


def test_16bit_tiff_with_max_sample_value_uses_it(tmp_path):
    twelve_bit = RNG.integers(0, 4096, size=(5, 4), dtype=np.uint16)
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[281] = 4095  # MaxSampleValue: 12-bit data in a 16-bit container
    Image.fromarray(twelve_bit).save(tmp_path / "a.tif", tiffinfo=tags)
    np.testing.assert_allclose(read_image(tmp_path / "a.tif"), twelve_bit / 4095, atol=1e-7)


def test_constant_images_do_not_divide_by_zero(tmp_path):
    Image.fromarray(np.full((3, 4), 500.0, np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), np.zeros((3, 4), np.float32))
    # Integer containers keep their absolute level: 128 stays mid-gray.
    Image.fromarray(np.full((3, 4), 128, np.uint8)).save(tmp_path / "c.png")
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), np.full((3, 4), 128 / 255), atol=1e-7)


def test_partly_non_finite_float_tiff_sets_them_to_zero(tmp_path):
    values = np.array([[np.nan, 10.0], [20.0, np.inf]], np.float32)
    Image.fromarray(values).save(tmp_path / "n.tif")
    np.testing.assert_allclose(read_image(tmp_path / "n.tif"), [[0.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("png_0_255", lambda p, m: Image.fromarray(m.astype(np.uint8) * 255).save(p / "m.png")),
        ("png_0_1", lambda p, m: Image.fromarray(m.astype(np.uint8)).save(p / "m.png")),
        ("png_1bit", lambda p, m: Image.fromarray(m).save(p / "m.png")),
        ("png_16bit", lambda p, m: Image.fromarray(m.astype(np.uint16) * 65535).save(p / "m.png")),
        ("png_palette", lambda p, m: Image.fromarray(m.astype(np.uint8)).convert("P").save(p / "m.png")),
        ("png_rgba_red", lambda p, m: Image.fromarray(np.dstack([m * 255, 0 * m, 0 * m, 0 * m]).astype(np.uint8)).save(p / "m.png")),
        ("npy_bool", lambda p, m: np.save(p / "m.npy", m)),
        ("npy_float", lambda p, m: np.save(p / "m.npy", m * 0.5)),
    ],
)
def test_read_mask_any_encoding_is_nonzero_to_one(tmp_path, name, writer):
    truth = RNG.random((7, 5)) > 0.5
    writer(tmp_path, truth)
    path = next(tmp_path.iterdir())
    mask = read_mask(path)
    assert mask.dtype == np.float32 and mask.shape == (7, 5)
    np.testing.assert_array_equal(mask, truth.astype(np.float32))


def test_16bit_png_round_trip_is_exact(tmp_path):
    every_level = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    write_image(tmp_path / "r.png", every_level / 65535, bits=16)
    with Image.open(tmp_path / "r.png") as image:
        assert image.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(image), every_level)
    image = read_image(tmp_path / "r.png")
    np.testing.assert_array_equal(image, (every_level / 65535).astype(np.float32))
    # Reading and writing again changes nothing.
    write_image(tmp_path / "again.png", image, bits=16)
    np.testing.assert_array_equal(read_image(tmp_path / "again.png"), image)


@pytest.mark.parametrize(("suffix", "bits", "tolerance"), [(".png", 8, 0), (".tif", 8, 0), (".tif", 16, 0), (".jpg", 8, 0.03)])
def test_write_formats_round_trip(tmp_path, suffix, bits, tolerance):
    levels = 2**bits - 1
    values = np.round(RNG.random((6, 9)) * levels) / levels
    write_image(tmp_path / f"w{suffix}", values, bits=bits)
    np.testing.assert_allclose(read_image(tmp_path / f"w{suffix}"), values, atol=tolerance + 1e-7)


def test_write_accepts_torch_channel_first(tmp_path):
    tensor = torch.linspace(0, 1, 12).reshape(1, 3, 4)
    write_image(tmp_path / "t.png", tensor)
    np.testing.assert_allclose(read_image(tmp_path / "t.png"), tensor[0].numpy(), atol=0.5 / 255 + 1e-7)


@pytest.mark.parametrize(
    ("name", "image", "bits", "match"),
    [
        ("bits", np.zeros((2, 2)), 12, "bits must be 8 or 16"),
        ("jpeg16", np.zeros((2, 2)), 16, "JPEG stores 8 bits"),
        ("range", np.full((2, 2), 255.0), 8, "expected \\[0, 1\\]"),
        ("nan", np.full((2, 2), np.nan), 8, "non-finite"),
        ("shape", np.zeros((2, 2, 3)), 8, "expected a non-empty \\(H, W\\)"),
        ("ints", np.zeros((2, 2), np.uint8), 8, "expected float pixels"),
    ],
)
def test_write_rejects_bad_input(tmp_path, name, image, bits, match):
    path = tmp_path / ("w.jpg" if name == "jpeg16" else "w.png")
    with pytest.raises(ValueError, match=match):
        write_image(path, image, bits=bits)
    assert not path.exists()


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="cannot write suffix"):
        write_image(tmp_path / "w.xyz", np.zeros((2, 2)))


@pytest.mark.realdata
def test_real_openist_jpeg_and_mask(shared_data_dir):
    folder = shared_data_dir / "lung_seg_openist"
    with (folder / "manifest.csv").open() as handle:
        row = next(csv.DictReader(handle))
    image = read_image(folder / row["image"])
    mask = read_mask(folder / row["mask"])
    assert image.shape == mask.shape == (int(row["height"]), int(row["width"]))
    assert image.dtype == mask.dtype == np.float32
    assert 0.0 <= image.min() < 0.2 and 0.8 < image.max() <= 1.0
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask.mean() == pytest.approx(float(row["lung_fraction"]), abs=1e-3)
    # Lungs are dark on a CXR: the lung field is darker than the rest of the image on average.
    assert image[mask == 1].mean() < image[mask == 0].mean()
