"""Every kind of bad input raises ImageReadError naming the file, never a library traceback."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit

from cxrfm.errors import ImageReadError
from cxrfm.io import read_image, read_mask
from cxrfm.io.dicom import read_dicom


def _png(width: int, height: int, raw: bytes = b"", bit_depth: int = 8) -> bytes:
    """A hand-written grayscale PNG whose IHDR claims ``width x height`` (no pixel data needed)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _encoded(array: np.ndarray, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=file_format, **options)
    return buffer.getvalue()


GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _frames(count: int) -> list[Image.Image]:
    return [Image.fromarray(np.full((8, 8), 40 * index, np.uint8)) for index in range(count)]


def missing(tmp_path, **_):
    return tmp_path / "nope.png", {}


def directory(tmp_path, **_):
    (tmp_path / "folder.png").mkdir()
    return tmp_path / "folder.png", {}


def empty(tmp_path, **_):
    return _write(tmp_path / "empty.png", b""), {}


def truncated_png(tmp_path, **_):
    data = _encoded(GRADIENT, "PNG")
    return _write(tmp_path / "cut.png", data[: len(data) // 2]), {}


def truncated_jpeg(tmp_path, **_):
    data = _encoded(GRADIENT, "JPEG")
    return _write(tmp_path / "cut.jpg", data[: len(data) // 2]), {}


def corrupt_png_header(tmp_path, **_):
    data = bytearray(_encoded(GRADIENT, "PNG"))
    data[16:24] = b"\xff" * 8  # width/height garbled: IHDR CRC no longer matches
    return _write(tmp_path / "header.png", bytes(data)), {}


def corrupt_png_data(tmp_path, **_):
    data = bytearray(_encoded(GRADIENT, "PNG"))
    data[60:90] = bytes(30)  # inside the compressed IDAT stream
    return _write(tmp_path / "data.png", bytes(data)), {}


def random_bytes(tmp_path, **_):
    return _write(tmp_path / "noise.png", np.random.default_rng(0).bytes(4096)), {}


def text_renamed_png(tmp_path, **_):
    return _write(tmp_path / "notes.png", b"Findings: no acute cardiopulmonary process.\n"), {}


def zero_width_png(tmp_path, **_):
    return _write(tmp_path / "zero.png", _png(0, 16)), {}


def zero_size_npy(tmp_path, **_):
    np.save(tmp_path / "zero.npy", np.zeros((0, 5), np.float32))
    return tmp_path / "zero.npy", {}


def npy_3d(tmp_path, **_):
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 5), np.float32))
    return tmp_path / "cube.npy", {}


def npy_4d(tmp_path, **_):
    np.save(tmp_path / "batch.npy", np.zeros((1, 1, 4, 5), np.float32))
    return tmp_path / "batch.npy", {}


def npy_object(tmp_path, **_):
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    return tmp_path / "obj.npy", {}


def npy_truncated(tmp_path, **_):
    np.save(tmp_path / "cut.npy", np.zeros((64, 64), np.float32))
    data = (tmp_path / "cut.npy").read_bytes()
    return _write(tmp_path / "cut.npy", data[:200]), {}


def decompression_bomb(tmp_path, **_):
    return _write(tmp_path / "bomb.png", _png(100_000, 100_000)), {}


def bomb_warning_is_error(tmp_path, **_):
    # Over Pillow's MAX_IMAGE_PIXELS but under twice that: Pillow only warns; we refuse.
    side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    return _write(tmp_path / "warn.png", _png(side, side)), {"max_pixels": 10**12}


def over_max_pixels(tmp_path, **_):
    return _write(tmp_path / "big.png", _encoded(GRADIENT, "PNG")), {"max_pixels": 1000}


def animated_gif(tmp_path, **_):
    first, *rest = _frames(3)
    first.save(tmp_path / "anim.gif", save_all=True, append_images=rest)
    return tmp_path / "anim.gif", {}


def animated_png(tmp_path, **_):
    first, *rest = _frames(2)
    first.save(tmp_path / "anim.png", save_all=True, append_images=rest)
    return tmp_path / "anim.png", {}


def multipage_tiff(tmp_path, **_):
    first, *rest = _frames(2)
    first.save(tmp_path / "pages.tif", save_all=True, append_images=rest)
    return tmp_path / "pages.tif", {}


def nan_only_tiff(tmp_path, **_):
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    return tmp_path / "nan.tif", {}


def inf_only_tiff(tmp_path, **_):
    Image.fromarray(np.full((4, 4), np.inf, np.float32)).save(tmp_path / "inf.tif")
    return tmp_path / "inf.tif", {}


def multiframe_dicom(tmp_path, make_dicom, **_):
    return make_dicom(tmp_path / "frames.dcm", np.zeros((3, 4, 4), np.uint16), frames=3), {}


def dicom_without_pixels(tmp_path, make_dicom, **_):
    return make_dicom(tmp_path / "nopix.dcm", None), {}


def dicom_truncated_pixels(tmp_path, make_dicom, **_):
    path = make_dicom(tmp_path / "short.dcm", np.zeros((16, 16), np.uint16))
    dataset = pydicom.dcmread(path)
    dataset.PixelData = dataset.PixelData[:100]
    dataset.save_as(path)
    return path, {}


def dicom_missing_plugin(tmp_path, make_dicom, monkeypatch):
    # Simulated by monkeypatching: the JPEG plug-ins are installed here, so the decoder is told
    # that none is available, as on a machine without pylibjpeg / gdcm.
    path = make_dicom(tmp_path / "jpeg.dcm", GRADIENT)
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([_encoded(GRADIENT, "JPEG")])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.save_as(path)
    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    return path, {}


def text_renamed_dcm(tmp_path, **_):
    return _write(tmp_path / "notes.dcm", b"this is not a DICOM file\n" * 10), {}


def fake_dicm_magic(tmp_path, **_):
    # Right magic at byte 128, garbage after: must not be mistaken for an image.
    return _write(tmp_path / "IM0002", bytes(128) + b"DICM" + b"\xff" * 64), {}


CASES = [
    missing, directory, empty, truncated_png, truncated_jpeg, corrupt_png_header, corrupt_png_data,
    random_bytes, text_renamed_png, zero_width_png, zero_size_npy, npy_3d, npy_4d, npy_object,
    npy_truncated, decompression_bomb, bomb_warning_is_error, over_max_pixels, animated_gif,
    animated_png, multipage_tiff, nan_only_tiff, inf_only_tiff, multiframe_dicom, dicom_without_pixels,
    dicom_truncated_pixels, dicom_missing_plugin, text_renamed_dcm, fake_dicm_magic,
]


@pytest.mark.parametrize("make_case", CASES, ids=[case.__name__ for case in CASES])
@pytest.mark.parametrize("reader", [read_image, read_mask], ids=["read_image", "read_mask"])
def test_bad_input_raises_image_read_error_naming_the_file(tmp_path, make_dicom, monkeypatch, make_case, reader):
    if reader is read_mask and make_case in (nan_only_tiff, inf_only_tiff):
        pytest.skip("masks read stored values; non-finite masks are covered by test_non_finite_mask")
    path, kwargs = make_case(tmp_path, make_dicom=make_dicom, monkeypatch=monkeypatch)
    with pytest.raises(ImageReadError) as caught:
        reader(path, **kwargs)
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path) and caught.value.reason


@pytest.mark.parametrize("make_case", [multiframe_dicom, dicom_without_pixels, dicom_missing_plugin, text_renamed_dcm])
def test_read_dicom_raises_image_read_error(tmp_path, make_dicom, monkeypatch, make_case):
    path, _ = make_case(tmp_path, make_dicom=make_dicom, monkeypatch=monkeypatch)
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_dicom(path)


@pytest.mark.parametrize(
    ("make_case", "reason"),
    [
        (missing, "does not exist"),
        (directory, "is a directory"),
        (empty, "empty"),
        (zero_width_png, "zero size"),
        (npy_3d, "2-D"),
        (decompression_bomb, "decompression bomb"),
        (bomb_warning_is_error, "decompression bomb"),
        (over_max_pixels, "over the limit"),
        (animated_gif, "multi-frame"),
        (multipage_tiff, "multi-frame"),
        (nan_only_tiff, "no finite pixel"),
        (multiframe_dicom, "multi-frame DICOM"),
        (dicom_without_pixels, "no pixel data"),
        (dicom_missing_plugin, "JPEG Baseline"),
        (text_renamed_png, "not a recognised image format"),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_error_reason_is_specific(tmp_path, make_dicom, monkeypatch, make_case, reason):
    path, kwargs = make_case(tmp_path, make_dicom=make_dicom, monkeypatch=monkeypatch)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path, **kwargs)


def test_non_finite_mask(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(ImageReadError, match="non-finite"):
        read_mask(tmp_path / "m.npy")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    Image.fromarray(GRADIENT).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied") as caught:
            read_image(path)
        assert str(path) in str(caught.value)
    finally:
        path.chmod(0o644)
