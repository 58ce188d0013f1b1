"""DICOM reading: LUT pipeline, photometric handling, compression, metadata, dispatch."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from cxrfm.errors import ImageReadError
from cxrfm.io import read_image, read_mask
from cxrfm.io.dicom import read_dicom

STORED = np.array([[0, 1000], [3000, 4000]], dtype=np.uint16)


def test_monochrome2_without_window_is_min_max(tmp_path, make_dicom):
    path = make_dicom(tmp_path / "m2.dcm", STORED, bits_stored=12)
    image, meta = read_dicom(path)
    assert image.dtype == np.float32 and image.shape == (2, 2)
    np.testing.assert_allclose(image, [[0.0, 0.25], [0.75, 1.0]], atol=1e-7)
    assert meta["voi"] == "minmax"


def test_monochrome1_is_inverted_so_bone_is_white(tmp_path, make_dicom):
    path = make_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", bits_stored=12)
    image, meta = read_dicom(path)
    np.testing.assert_allclose(image, [[1.0, 0.75], [0.25, 0.0]], atol=1e-7)
    assert meta["photometric"] == "MONOCHROME1"


# Stored 0..500 step 100; slope 2, intercept -500 -> modality values -500, -300, -100, 100, 300, 500.
RAMP = np.array([[0, 100, 200, 300, 400, 500]], dtype=np.uint16)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # LINEAR, c=0.5, w=401: 0 below -200, 1 above 200, (x - 0) / 400 + 0.5 between.
        ({"WindowCenter": 0.5, "WindowWidth": 401}, [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]),
        ({"WindowCenter": 0, "WindowWidth": 400, "VOILUTFunction": "LINEAR_EXACT"}, [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]),
        (
            {"WindowCenter": 0, "WindowWidth": 400, "VOILUTFunction": "SIGMOID"},
            [1 / (1 + np.exp(4 * 500 / 400)), 1 / (1 + np.exp(3.0)), 1 / (1 + np.exp(1.0)),
             1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-5.0))],
        ),
        # Multi-valued window: the first pair is the default.
        ({"WindowCenter": [0.5, 9999], "WindowWidth": [401, 1]}, [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]),
    ],
    ids=["linear", "linear_exact", "sigmoid", "multi_valued"],
)
def test_rescale_then_window(tmp_path, make_dicom, window, expected):
    path = make_dicom(tmp_path / "w.dcm", RAMP, RescaleSlope=2, RescaleIntercept=-500, **window)
    image, meta = read_dicom(path)
    np.testing.assert_allclose(image[0], expected, atol=1e-6)
    assert meta["voi"] == "window"


def test_invalid_window_falls_back_to_min_max(tmp_path, make_dicom):
    path = make_dicom(tmp_path / "w0.dcm", RAMP, WindowCenter=100, WindowWidth=0)
    image, meta = read_dicom(path)
    np.testing.assert_allclose(image[0], np.linspace(0, 1, 6), atol=1e-6)
    assert meta["voi"] == "minmax"


def test_voi_lut_sequence_wins_over_window(tmp_path, make_dicom):
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 8])  # 4 entries, first stored value 0, 8 bits
    item.add_new("LUTData", "US", [0, 51, 102, 255])
    stored = np.array([[0, 1, 2, 3, 10]], dtype=np.uint16)
    path = make_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=Sequence([item]),
                      WindowCenter=5, WindowWidth=10)
    image, meta = read_dicom(path)
    np.testing.assert_allclose(image[0], [0.0, 0.2, 0.4, 1.0, 1.0], atol=1e-6)
    assert meta["voi"] == "lut"


def test_signed_pixels_are_min_max_scaled(tmp_path, make_dicom):
    stored = np.array([[-1000, 0], [500, 1000]], dtype=np.int16)
    image, _ = read_dicom(make_dicom(tmp_path / "s.dcm", stored))
    np.testing.assert_allclose(image, [[0.0, 0.5], [0.75, 1.0]], atol=1e-6)


def test_rgb_dicom_becomes_luma(tmp_path, make_dicom):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    image, meta = read_dicom(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_allclose(image, [[0.299, 0.587], [0.114, 1.0]], atol=1e-6)
    assert meta["voi"] == "colour"


def test_metadata(tmp_path, make_dicom):
    _, meta = read_dicom(make_dicom(tmp_path / "meta.dcm", STORED, bits_stored=12))
    assert meta["view_position"] == "PA"
    assert meta["patient_id"] == "PATIENT-7"
    assert meta["study_uid"] == "1.2.3.4.5"
    assert meta["modality"] == "DX"
    assert (meta["rows"], meta["cols"], meta["bits_stored"]) == (2, 2, 12)
    assert meta["pixel_spacing"] == (0.15, 0.125)
    assert meta["transfer_syntax"] == "Explicit VR Little Endian"


def test_rle_compressed_matches_uncompressed(tmp_path, make_dicom):
    stored = np.random.default_rng(0).integers(0, 4096, size=(9, 11), dtype=np.uint16)
    plain = make_dicom(tmp_path / "plain.dcm", stored, bits_stored=12)
    dataset = pydicom.dcmread(plain)
    dataset.compress(RLELossless)
    dataset.save_as(tmp_path / "rle.dcm")
    image, meta = read_dicom(tmp_path / "rle.dcm")
    assert meta["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_array_equal(image, read_dicom(plain)[0])


def _jpeg_dicom(tmp_path, make_dicom):
    """A JPEG Baseline DICOM (Pillow-encoded JPEG, encapsulated) and the gradient it encodes."""
    gradient = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="JPEG", quality=95)
    path = make_dicom(tmp_path / "jpeg.dcm", gradient)
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.save_as(path)
    return path, gradient


def test_jpeg_baseline_decodes_through_plugin(tmp_path, make_dicom):
    path, gradient = _jpeg_dicom(tmp_path, make_dicom)
    image, meta = read_dicom(path)
    assert meta["transfer_syntax"] == "JPEG Baseline (Process 1)"
    expected = (gradient - gradient.min()) / (gradient.max() - gradient.min())
    np.testing.assert_allclose(image, expected, atol=3 / 248)


def test_missing_decoder_plugin_names_syntax_and_packages(tmp_path, make_dicom, monkeypatch):
    # Simulated: the real plug-ins are installed here, so the decoder is told it has none.
    path, _ = _jpeg_dicom(tmp_path, make_dicom)
    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(ImageReadError) as caught:
        read_dicom(path)
    message = str(caught.value)
    assert str(path) in message
    assert "JPEG Baseline (Process 1)" in message and "pylibjpeg-libjpeg" in message


def test_read_image_dispatches_on_dicm_magic_without_suffix(tmp_path, make_dicom):
    with_suffix = make_dicom(tmp_path / "a.dcm", STORED, bits_stored=12)
    no_suffix = tmp_path / "IM0001"
    no_suffix.write_bytes(with_suffix.read_bytes())
    np.testing.assert_array_equal(read_image(no_suffix), read_dicom(with_suffix)[0])
    np.testing.assert_array_equal(read_image(with_suffix), read_dicom(with_suffix)[0])


def test_read_mask_on_dicom_uses_stored_values(tmp_path, make_dicom):
    stored = np.array([[0, 1], [0, 7]], dtype=np.uint16)
    # The window would make stored 1 black; masks ignore the display pipeline.
    path = make_dicom(tmp_path / "mask.dcm", stored, WindowCenter=100, WindowWidth=10)
    mask = read_mask(path)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, [[0, 1], [0, 1]])


def test_max_pixels_checked_before_decoding(tmp_path, make_dicom):
    path = make_dicom(tmp_path / "big.dcm", np.zeros((8, 8), np.uint16))
    with pytest.raises(ImageReadError, match="over the limit"):
        read_dicom(path, max_pixels=63)
    assert read_dicom(path, max_pixels=64)[0].shape == (8, 8)
