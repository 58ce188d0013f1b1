"""Adversarial DICOMs built with pydicom: our error naming the file (and element), or a clean read.

Elements the pixels depend on (Rows, NumberOfFrames, Bits*, Rescale Slope / Intercept, the transfer
syntax, the pixel data itself) make a malformed file unreadable, with an ImageReadError naming the
file and the element. Broken elements the pixels do not need (Pixel Spacing, Window, VOI LUT,
text fields) are dropped with a logged warning: the image reads as it would without them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from cxrfm.errors import ImageReadError
from cxrfm.io import read_dicom, read_image, read_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on invalid values

PIXELS = (np.add.outer(np.arange(16), np.arange(12)) * 50).astype(np.uint16)  # 0 .. 1300


def with_raw_elements(path: Path, **raw: bytes) -> Path:
    """Rewrite ``path`` with elements holding exactly these bytes (pydicom validates nothing)."""
    dataset = pydicom.dcmread(path)
    for keyword, value in raw.items():
        tag = Tag(tag_for_keyword(keyword))
        dataset[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    dataset.save_as(path)
    return path


def edited(path: Path, edit) -> Path:
    dataset = pydicom.dcmread(path)
    edit(dataset)
    dataset.save_as(path, enforce_file_format=False)
    return path


def _voi_item(**elements) -> Sequence:
    item = Dataset()
    for keyword, (vr, value) in elements.items():
        item.add_new(keyword, vr, value)
    return Sequence([item])


# --------------------------------------------------------------- refused: pixels cannot be trusted
def bad_vr_number_of_frames(base):
    return with_raw_elements(base, NumberOfFrames=b"1A"), "NumberOfFrames"


def negative_number_of_frames(base):
    return with_raw_elements(base, NumberOfFrames=b"-3"), "NumberOfFrames"


def rows_wrong_byte_length(base):
    return with_raw_elements(base, Rows=b"\x10"), "Rows"


def rescale_slope_text(base):
    return with_raw_elements(base, RescaleSlope=b"two ", RescaleIntercept=b"0 "), "RescaleSlope"


def rescale_slope_infinite(base):
    return with_raw_elements(base, RescaleSlope=b"inf ", RescaleIntercept=b"0 "), "RescaleSlope"


def rescale_slope_zero(base):
    return with_raw_elements(base, RescaleSlope=b"0 ", RescaleIntercept=b"0 "), "RescaleSlope"


def rescale_slope_two_values(base):
    return with_raw_elements(base, RescaleSlope=b"1\\2 ", RescaleIntercept=b"0 "), "RescaleSlope"


def rescale_intercept_text(base):
    return with_raw_elements(base, RescaleSlope=b"1 ", RescaleIntercept=b"--1 "), "RescaleIntercept"


def private_transfer_syntax(base):
    return edited(base, lambda d: setattr(d.file_meta, "TransferSyntaxUID", "1.3.6.1.4.1.99999.1.2")), "transfer syntax"


def transfer_syntax_not_a_uid(base):
    return edited(base, lambda d: setattr(d.file_meta, "TransferSyntaxUID", "not-a-uid")), "transfer syntax"


def missing_pixel_data(base):
    return edited(base, lambda d: delattr(d, "PixelData")), "no pixel data"


def empty_pixel_data(base):
    return edited(base, lambda d: setattr(d, "PixelData", b"")), "empty"


def bits_allocated_8_for_16_bit_data(base):
    return with_raw_elements(base, BitsAllocated=b"\x08\x00"), "Bits"


def bits_allocated_12(base):
    return with_raw_elements(base, BitsAllocated=b"\x0c\x00"), "Bits Allocated"


def bits_allocated_32_data_too_short(base):
    return with_raw_elements(base, BitsAllocated=b"\x20\x00"), "pixel data"


def bits_stored_over_allocated(base):
    return with_raw_elements(base, BitsStored=b"\x20\x00"), "Bits Stored"


def unknown_photometric(base):
    return with_raw_elements(base, PhotometricInterpretation=b"BOGUS "), "Photometric"


def palette_without_palette(base):
    return with_raw_elements(base, PhotometricInterpretation=b"PALETTE COLOR "), "Palette"


def samples_per_pixel_7(base):
    return with_raw_elements(base, SamplesPerPixel=b"\x07\x00"), "Samples per Pixel"


def modality_lut_without_data(base):
    return edited(base, lambda d: setattr(d, "ModalityLUTSequence", _voi_item(LUTDescriptor=("US", [16, 0, 16])))), "Modality LUT"


def truncated_in_pixel_data(base):
    data = base.read_bytes()
    base.write_bytes(data[: len(data) - 100])
    return base, "pixel data"


def truncated_in_header(base):
    base.write_bytes(base.read_bytes()[:300])
    return base, "no pixel data"


def truncated_without_suffix(base):
    target = base.with_suffix("")
    data = base.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target, "pixel data"


def garbage_after_header(base):
    base.write_bytes(base.read_bytes()[:400] + b"\xff" * 300)
    return base, "DICOM"


REFUSED = [
    bad_vr_number_of_frames, negative_number_of_frames, rows_wrong_byte_length, rescale_slope_text,
    rescale_slope_infinite, rescale_slope_zero, rescale_slope_two_values, rescale_intercept_text,
    private_transfer_syntax, transfer_syntax_not_a_uid, missing_pixel_data, empty_pixel_data,
    bits_allocated_8_for_16_bit_data, bits_allocated_12, bits_allocated_32_data_too_short,
    bits_stored_over_allocated, unknown_photometric, palette_without_palette, samples_per_pixel_7,
    modality_lut_without_data, truncated_in_pixel_data, truncated_in_header, truncated_without_suffix,
    garbage_after_header,
]
# read_mask uses the stored values: the LUT / palette steps that only read_image applies are not reached.
_LUT_ONLY = {
    rescale_slope_text, rescale_slope_infinite, rescale_slope_zero, rescale_slope_two_values,
    rescale_intercept_text, palette_without_palette, modality_lut_without_data,
}


@pytest.mark.parametrize("reader", [read_image, read_dicom, read_mask], ids=lambda r: r.__name__)
@pytest.mark.parametrize("make_case", REFUSED, ids=[case.__name__ for case in REFUSED])
def test_malformed_dicom_raises_image_read_error_naming_file_and_element(tmp_path, make_dicom, make_case, reader):
    if reader is read_mask and make_case in _LUT_ONLY:
        pytest.skip("read_mask does not apply the Modality LUT or palette")
    path, names = make_case(make_dicom(tmp_path / "x.dcm", PIXELS, bits_stored=12))
    with pytest.raises(ImageReadError) as caught:
        reader(path)
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    assert names.lower() in caught.value.reason.lower(), caught.value.reason


# ------------------------------------------------------ read: broken metadata the pixels do not need
def _reference(tmp_path: Path, make_dicom) -> np.ndarray:
    return read_image(make_dicom(tmp_path / "reference.dcm", PIXELS, bits_stored=12))


@pytest.mark.parametrize(
    ("raw", "warned"),
    [
        ({"PixelSpacing": b"abc\\0.1 "}, "PixelSpacing"),
        ({"PixelSpacing": b"0.1 "}, "PixelSpacing"),
        ({"PixelSpacing": b"-1\\0.1 "}, "PixelSpacing"),
    ],
    ids=["text", "one_value", "negative"],
)
def test_malformed_pixel_spacing_is_dropped_with_a_warning(tmp_path, make_dicom, caplog, raw, warned):
    path = with_raw_elements(make_dicom(tmp_path / "s.dcm", PIXELS, bits_stored=12), **raw)
    with caplog.at_level(logging.WARNING, logger="cxrfm.io.dicom"):
        image, meta = read_dicom(path)
    assert meta["pixel_spacing"] is None and meta["rows"] == 16
    np.testing.assert_array_equal(image, _reference(tmp_path, make_dicom))
    assert warned in caplog.text and str(path) in caplog.text


def test_malformed_pixel_spacing_falls_back_to_imager_pixel_spacing(tmp_path, make_dicom):
    path = make_dicom(tmp_path / "s.dcm", PIXELS, ImagerPixelSpacing=[0.2, 0.3])
    _, meta = read_dicom(with_raw_elements(path, PixelSpacing=b"x\\y "))
    assert meta["pixel_spacing"] == (0.2, 0.3)


def test_read_image_does_not_parse_the_metadata(tmp_path, make_dicom, caplog):
    path = with_raw_elements(make_dicom(tmp_path / "s.dcm", PIXELS, bits_stored=12), PixelSpacing=b"abc ")
    with caplog.at_level(logging.WARNING, logger="cxrfm.io.dicom"):
        read_image(path)
    assert "PixelSpacing" not in caplog.text  # no warning per read in a training loop


@pytest.mark.parametrize(
    "raw",
    [
        {"WindowCenter": b"abc ", "WindowWidth": b"100 "},
        {"WindowCenter": b"nan ", "WindowWidth": b"100 "},  # used to make an all-NaN image
        {"WindowCenter": b"100 ", "WindowWidth": b"inf "},  # used to make a constant 0.5 image
    ],
    ids=["center_text", "center_nan", "width_inf"],
)
def test_malformed_window_falls_back_to_min_max_with_a_warning(tmp_path, make_dicom, caplog, raw):
    path = with_raw_elements(make_dicom(tmp_path / "w.dcm", PIXELS, bits_stored=12), **raw)
    with caplog.at_level(logging.WARNING, logger="cxrfm.io.dicom"):
        image, meta = read_dicom(path)
    assert meta["voi"] == "minmax" and np.isfinite(image).all()
    np.testing.assert_array_equal(image, _reference(tmp_path, make_dicom))
    assert "window" in caplog.text and str(path) in caplog.text


def test_malformed_voi_lut_falls_back_to_the_window(tmp_path, make_dicom, caplog):
    sequence = _voi_item(LUTDescriptor=("US", [4096, 0, 16]))  # no LUTData
    path = make_dicom(tmp_path / "v.dcm", PIXELS, VOILUTSequence=sequence, WindowCenter=650.5, WindowWidth=1301)
    with caplog.at_level(logging.WARNING, logger="cxrfm.io.dicom"):
        image, meta = read_dicom(path)
    assert meta["voi"] == "window" and "VOI LUT" in caplog.text
    plain = make_dicom(tmp_path / "p.dcm", PIXELS, WindowCenter=650.5, WindowWidth=1301)
    np.testing.assert_array_equal(image, read_image(plain))


def test_undecodable_text_fields_still_read(tmp_path, make_dicom):
    path = with_raw_elements(make_dicom(tmp_path / "t.dcm", PIXELS), PatientID=b"\xff\xfe\x00", ViewPosition=b"\x01")
    image, meta = read_dicom(path)
    assert image.shape == (16, 12) and meta["rows"] == 16


def test_number_of_frames_one_reads(tmp_path, make_dicom):
    path = with_raw_elements(make_dicom(tmp_path / "f.dcm", PIXELS, bits_stored=12), NumberOfFrames=b"1 ")
    np.testing.assert_array_equal(read_image(path), _reference(tmp_path, make_dicom))


# ------------------------------------------------------------- any other exception type is wrapped
class _OddLibraryError(Exception):
    """An exception type no reader lists, as a decoder bug on odd input would raise."""


@pytest.mark.parametrize("target", ["pydicom.dcmread", "pixel_array"])
def test_unexpected_exception_from_pydicom_is_wrapped(tmp_path, make_dicom, monkeypatch, target):
    path = make_dicom(tmp_path / "odd.dcm", PIXELS)

    def explode(*_args, **_kwargs):
        raise _OddLibraryError("boom")

    if target == "pixel_array":
        monkeypatch.setattr(Dataset, "pixel_array", property(explode))
    else:
        monkeypatch.setattr(pydicom, "dcmread", explode)
    for reader in (read_image, read_mask, read_dicom):
        with pytest.raises(ImageReadError, match="_OddLibraryError: boom") as caught:
            reader(path)
        assert str(path) in str(caught.value) and isinstance(caught.value.__cause__, _OddLibraryError)


def test_unexpected_exception_from_pillow_is_wrapped(tmp_path, monkeypatch):
    path = tmp_path / "odd.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)

    def explode(*_args, **_kwargs):
        raise _OddLibraryError("pillow")

    monkeypatch.setattr(Image, "open", explode)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match="_OddLibraryError: pillow") as caught:
            reader(path)
        assert str(path) in str(caught.value)


def test_path_the_os_cannot_look_up(tmp_path):
    path = tmp_path / ("x" * 5000 + ".png")
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert caught.value.path == str(path)
