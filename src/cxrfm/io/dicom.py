"""DICOM -> the toolkit's pixel convention: ``(H, W)`` float32 in ``[0, 1]``, 0 = black, bone white.

:func:`read_dicom` reads one single-frame DICOM with pydicom and returns the image plus a small
metadata dict. The pixel pipeline, in the order DICOM PS3.3 C.11 defines for display:

1. **Decode** the stored values (``Dataset.pixel_array``). Native (uncompressed) and RLE data
   decode with pydicom alone; JPEG / JPEG-LS / JPEG 2000 need a pydicom decoder plug-in
   (``pylibjpeg`` + ``pylibjpeg-libjpeg`` or ``pylibjpeg-openjpeg``, ``gdcm``, Pillow). When none is
   installed for the file's transfer syntax the error names the syntax and the packages to install.
2. **Modality LUT**: Rescale Slope / Intercept or a Modality LUT Sequence
   (``pydicom.pixels.apply_modality_lut``).
3. **VOI**, first match wins:

   - a VOI LUT Sequence (first item, ``pydicom.pixels.apply_voi``): output divided by
     ``2**bits - 1`` with ``bits`` the LUT descriptor's bits per entry;
   - Window Center / Width (first value of each), computed straight to ``[0, 1]`` with the
     VOI LUT Function: ``LINEAR`` (default; PS3.3 C.11.2.1.2.1: ``x <= c - 0.5 - (w - 1) / 2`` -> 0,
     ``x > c - 0.5 + (w - 1) / 2`` -> 1, else ``(x - (c - 0.5)) / (w - 1) + 0.5``), ``LINEAR_EXACT``
     (``(x - c) / w + 0.5`` clipped) or ``SIGMOID`` (``1 / (1 + exp(-4 (x - c) / w))``);
     a window with a non-positive width (or ``w < 1`` for ``LINEAR``) is ignored with a warning;
   - neither: min-max over the image (finite minimum -> 0, maximum -> 1; a constant image -> 0).

4. **MONOCHROME1** (minimum value shown white) is inverted (``1 - x``) so that bone is white, as in
   MONOCHROME2.

Colour DICOMs (RGB, YBR_* - pydicom converts YBR to RGB) become gray by BT.601 luma
(``0.299 R + 0.587 G + 0.114 B``) divided by ``2**BitsStored - 1``; PALETTE COLOR goes through its
palette first and is divided by the palette's full scale. No Modality or VOI LUT applies to colour.
Float / Double Float Pixel Data are min-max scaled.

Rejected with :class:`cxrfm.errors.ImageReadError` (message names the file, and the element where
one is at fault): not DICOM, no or empty pixel data, missing Rows/Columns, zero size, more than
``max_pixels`` pixels, multi-frame (``NumberOfFrames > 1``), a malformed element the pixels depend on
(Rows, Columns, NumberOfFrames, BitsStored, Rescale Slope / Intercept: not one finite number, or a
zero slope), an unknown or private transfer syntax, compressed with no decoder installed,
undecodable or truncated pixel data. Any other exception from pydicom is wrapped into an
ImageReadError too (chained as ``__cause__``).

Broken elements the pixels do not depend on are dropped with a logged warning instead: a malformed
VOI LUT Sequence or Window Center / Width (contrast falls back to the next VOI step), a malformed
Pixel Spacing or text field in the metadata dict (None).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import UID

from cxrfm.errors import ImageReadError
from cxrfm.io._common import (
    DEFAULT_MAX_PIXELS,
    LIBRARY_ERRORS,
    check_readable_file,
    check_size,
    guard_unexpected,
    luminance,
    min_max_scale,
)

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# pydicom's own exception types derive from Exception directly, not from ValueError.
DICOM_ERRORS: tuple[type[BaseException], ...] = (*LIBRARY_ERRORS, BytesLengthException, InvalidDicomError)


def read_dicom(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame DICOM as the toolkit's gray image.

    Args:
        path: the DICOM file (any or no suffix).
        max_pixels: largest ``Rows * Columns`` accepted; checked before the pixels are decoded.

    Returns:
        ``(image, meta)``: ``image`` is ``(H, W)`` float32 in ``[0, 1]`` with bone white (see the
        module docstring for the exact pipeline); ``meta`` holds plain Python values:
        ``view_position``, ``patient_id``, ``study_uid``, ``series_uid``, ``sop_uid``, ``modality``,
        ``photometric``, ``rows``, ``cols``, ``bits_stored``, ``transfer_syntax`` (name),
        ``pixel_spacing`` (``(row_mm, col_mm)`` from PixelSpacing or ImagerPixelSpacing) and ``voi``
        (``"lut"``, ``"window"``, ``"minmax"`` or ``"colour"``: which step set the contrast). Fields
        the file lacks are None.

    Raises:
        ImageReadError: for every unreadable or unsupported file (see the module docstring).
    """
    image, voi, dataset = _unit_range_image(path, max_pixels)
    path = Path(path)
    with guard_unexpected(path, "cannot read the DICOM metadata"):
        meta = _metadata(dataset, path)
    meta["voi"] = voi
    return image, meta


def read_dicom_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image of :func:`read_dicom` alone: the metadata dict is not built (nor warned about)."""
    return _unit_range_image(path, max_pixels)[0]


def _unit_range_image(path: str | os.PathLike[str], max_pixels: int) -> tuple[np.ndarray, str, Dataset]:
    stored, dataset = decode_dicom_pixels(path, max_pixels=max_pixels)
    path = Path(path)
    with guard_unexpected(path, "cannot apply the DICOM LUTs"):
        image, voi = _to_unit_range(stored, dataset, path)
    if not np.isfinite(image).all():
        raise ImageReadError(path, "the DICOM LUTs produced non-finite pixel values")
    return image, voi, dataset


def decode_dicom_pixels(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, Dataset]:
    """Decode the stored pixel values of a single-frame DICOM, before any LUT.

    Returns:
        ``(stored, dataset)``: ``stored`` is ``(H, W)`` for monochrome / palette data or
        ``(H, W, 3)`` RGB for colour data, in the file's own dtype and units.
    """
    path = check_readable_file(path)
    with guard_unexpected(path, "corrupt DICOM file"):
        dataset = _read_dataset(path)
        _check_header(dataset, path, max_pixels)
        syntax = _transfer_syntax(dataset, path)
        _check_decoder_available(syntax, path)
        try:
            stored = dataset.pixel_array
        except DICOM_ERRORS as error:
            raise ImageReadError(
                path,
                f"cannot decode the pixel data ({syntax.name if syntax else 'unknown transfer syntax'}): "
                f"{type(error).__name__}: {error}",
            ) from error
        if not isinstance(stored, np.ndarray) or stored.ndim not in (2, 3) or (
            stored.ndim == 3 and stored.shape[-1] != 3
        ):
            raise ImageReadError(path, f"unexpected decoded pixel array shape {np.shape(stored)}")
        return stored, dataset


def _read_dataset(path: Path) -> Dataset:
    """Parse the file; files named ``.dcm`` without the 128-byte preamble are retried with force."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as error:
        if path.suffix.lower() not in DICOM_SUFFIXES:
            raise ImageReadError(path, f"not a DICOM file ({error})") from error
    except DICOM_ERRORS as error:
        raise ImageReadError(path, f"corrupt DICOM file ({type(error).__name__}: {error})") from error
    try:
        dataset = pydicom.dcmread(path, force=True)
    except DICOM_ERRORS as error:
        raise ImageReadError(path, f"not a DICOM file ({type(error).__name__}: {error})") from error
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no pixel data)")
    return dataset


def _check_header(dataset: Dataset, path: Path, max_pixels: int) -> None:
    """Reject what cannot become one ``(H, W)`` image, before any pixel is decoded."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in dataset), None)
    if keyword is None:
        raise ImageReadError(path, "DICOM has no pixel data (no PixelData element)")
    try:
        empty = dataset[keyword].is_empty
    except DICOM_ERRORS as error:
        raise ImageReadError(path, f"malformed {keyword} element ({type(error).__name__}: {error})") from error
    if empty:
        raise ImageReadError(path, f"DICOM {keyword} element is empty (0 bytes of pixel data)")
    rows, cols = _header_int(dataset, "Rows", path), _header_int(dataset, "Columns", path)
    if rows is None or cols is None:
        raise ImageReadError(path, "DICOM lacks Rows/Columns, so its pixel data cannot be shaped")
    num_frames = _header_int(dataset, "NumberOfFrames", path)
    if num_frames is not None and num_frames < 0:
        raise ImageReadError(path, f"malformed NumberOfFrames value {num_frames} (negative)")
    num_frames = num_frames or 1
    if num_frames > 1:
        raise ImageReadError(
            path, f"multi-frame DICOM ({num_frames} frames); only single-frame images are supported"
        )
    check_size(path, rows, cols, max_pixels)


def _raw_value(dataset: Dataset, keyword: str) -> Any:
    """The element's value as stored in the file (bytes for an unconverted raw element)."""
    try:
        element = dataset.get_item(keyword)
        return getattr(element, "value", element)
    except DICOM_ERRORS:
        return "?"


def _header_int(dataset: Dataset, keyword: str, path: Path) -> int | None:
    """A single integer element the pixels depend on; None when absent or empty.

    Raises:
        ImageReadError: the element is present but not one integer (``'1A'``, two values, the wrong
            number of bytes), naming the element and its stored value.
    """
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            if len(value) != 1:
                raise ValueError(f"{len(value)} values")
            value = value[0]
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    except DICOM_ERRORS as error:
        raise ImageReadError(
            path,
            f"malformed {keyword} value {_raw_value(dataset, keyword)!r} ({type(error).__name__}: {error}); "
            "the pixel data cannot be interpreted without it",
        ) from error


def _header_float(dataset: Dataset, keyword: str, path: Path) -> float:
    """A single finite number element the pixel values depend on (Rescale Slope / Intercept)."""
    try:
        value = dataset.get(keyword)
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            if len(value) != 1:
                raise ValueError(f"{len(value)} values")
            value = value[0]
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not finite")
        return number
    except DICOM_ERRORS as error:
        raise ImageReadError(
            path,
            f"malformed {keyword} value {_raw_value(dataset, keyword)!r} ({type(error).__name__}: {error}); "
            "the pixel values cannot be interpreted without it",
        ) from error


def _transfer_syntax(dataset: Dataset, path: Path | None = None) -> UID | None:
    """The file's Transfer Syntax UID; None when absent or empty (pydicom then guesses the encoding).

    Raises:
        ImageReadError: (with ``path``) a UID that is not a transfer syntax pydicom knows: a private
            or unknown syntax, whose pixel encoding cannot be known.
    """
    try:
        file_meta = getattr(dataset, "file_meta", None)
        value = None if file_meta is None else file_meta.get("TransferSyntaxUID")
        text = "" if value is None else str(value).strip().rstrip("\x00").strip()
    except DICOM_ERRORS as error:
        if path is None:
            return None
        raise ImageReadError(path, f"malformed TransferSyntaxUID ({type(error).__name__}: {error})") from error
    if not text:
        return None
    syntax = UID(text)
    if not syntax.is_transfer_syntax:
        if path is None:
            return None
        raise ImageReadError(
            path,
            f"unknown or private transfer syntax {text!r}: pydicom does not know how its pixel data is "
            "encoded, so it cannot be decoded",
        )
    return syntax


def _check_decoder_available(syntax: UID | None, path: Path) -> None:
    """Name the transfer syntax and the packages to install when no plug-in can decode it."""
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise ImageReadError(
            path, f"pixel data uses transfer syntax {syntax} ({syntax.name}), which pydicom cannot decode"
        ) from error
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "no plug-in registered"
        raise ImageReadError(
            path,
            f"pixel data is compressed as '{syntax.name}' ({syntax}) and no installed pydicom "
            f"plug-in can decode it; install one of: {options}",
        )


def _to_unit_range(stored: np.ndarray, dataset: Dataset, path: Path) -> tuple[np.ndarray, str]:
    """Stored values -> float32 [0, 1] with bone white, and the name of the contrast step used."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if stored.ndim == 3:
        bits_stored = _header_int(dataset, "BitsStored", path) or 8
        if not 1 <= bits_stored <= 32:
            raise ImageReadError(path, f"malformed BitsStored value {bits_stored} for colour pixel data")
        return _clip(luminance(stored) / (2**bits_stored - 1)), "colour"
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(stored, dataset)
        except DICOM_ERRORS as error:
            reason = f"cannot apply the Palette Color LUT ({type(error).__name__}: {error})"
            raise ImageReadError(path, reason) from error
        return _clip(luminance(rgb) / np.iinfo(rgb.dtype).max), "colour"
    if stored.dtype.kind == "f":
        image, voi = min_max_scale(stored, path), "minmax"
    else:
        image, voi = _apply_voi(_modality_lut(stored, dataset, path), dataset, path)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32), voi


def _modality_lut(stored: np.ndarray, dataset: Dataset, path: Path) -> np.ndarray:
    """Stored values -> modality values (Modality LUT Sequence, else Rescale Slope / Intercept).

    Both are needed to know what the values mean (and in which units a window is given), so a
    malformed one is an error, not a warning.
    """
    if "ModalityLUTSequence" in dataset:
        try:
            return apply_modality_lut(stored, dataset)
        except DICOM_ERRORS as error:
            reason = f"malformed Modality LUT Sequence ({type(error).__name__}: {error})"
            raise ImageReadError(path, reason) from error
    if "RescaleSlope" not in dataset or "RescaleIntercept" not in dataset:
        return stored  # pydicom's rule: rescale applies only when both are present
    slope = _header_float(dataset, "RescaleSlope", path)
    intercept = _header_float(dataset, "RescaleIntercept", path)
    if slope == 0.0:
        raise ImageReadError(path, "malformed RescaleSlope value 0 (every pixel would get the same value)")
    return stored.astype(np.float64) * slope + intercept


def _apply_voi(values: np.ndarray, dataset: Dataset, path: Path) -> tuple[np.ndarray, str]:
    lut = _voi_lut(values, dataset, path)
    if lut is not None:
        return lut, "lut"
    window = _window(dataset, path)
    if window is not None:
        center, width, function = window
        return _clip(_windowed(values.astype(np.float64), center, width, function)), "window"
    return min_max_scale(values, path), "minmax"


def _voi_lut(values: np.ndarray, dataset: Dataset, path: Path) -> np.ndarray | None:
    """The first VOI LUT Sequence item applied, in [0, 1]; None when absent or malformed (warned)."""
    try:
        if not dataset.get("VOILUTSequence"):
            return None
        # LUT input must be integer indices; rescaled values are whole numbers for integer slopes.
        indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        if not 1 <= bits <= 32:
            raise ValueError(f"LUTDescriptor declares {bits} bits per entry")
        return _clip(apply_voi(indices, dataset) / (2**bits - 1))
    except DICOM_ERRORS as error:
        logger.warning(
            "%s: ignoring malformed VOI LUT Sequence (%s: %s); using the window or min-max",
            path, type(error).__name__, error,
        )
        return None


def _window(dataset: Dataset, path: Path) -> tuple[float, float, str] | None:
    """First Window Center / Width pair and the VOI LUT Function, or None when absent / invalid."""
    try:
        if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
            return None
        center, width = _first_value(dataset.WindowCenter), _first_value(dataset.WindowWidth)
    except DICOM_ERRORS as error:
        logger.warning("%s: ignoring malformed window (%s: %s); using min-max", path, type(error).__name__, error)
        return None
    try:
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except DICOM_ERRORS:
        function = "?"
    if center is None or width is None:
        raw_center, raw_width = _raw_value(dataset, "WindowCenter"), _raw_value(dataset, "WindowWidth")
        if raw_center not in (None, "", b"") and raw_width not in (None, "", b""):
            logger.warning(
                "%s: ignoring malformed window (center %r, width %r); using min-max", path, raw_center, raw_width
            )
        return None
    if not (math.isfinite(center) and math.isfinite(width)):
        logger.warning("%s: ignoring non-finite window (center %s, width %s); using min-max", path, center, width)
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning("%s: unknown VOI LUT Function %r; using LINEAR", path, function)
        function = "LINEAR"
    valid = width >= 1.0 if function == "LINEAR" else width > 0.0
    if not valid:
        logger.warning("%s: ignoring window with width %s (%s); using min-max", path, width, function)
        return None
    return center, width, function


def _windowed(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing with the output range set to [0, 1] (clipping done by caller)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return (values - center) / width + 0.5
    # LINEAR: the half-pixel offsets make the ramp run between the centres of the end values.
    low = center - 0.5 - (width - 1.0) / 2.0
    high = center - 0.5 + (width - 1.0) / 2.0
    if width == 1.0:
        return (values > high).astype(np.float64)
    ramp = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.where(values <= low, 0.0, np.where(values > high, 1.0, ramp))


def _first_value(element_value: Any) -> float | None:
    """Window values may be multi-valued (several presets); the first one is the default."""
    if isinstance(element_value, (list, tuple, pydicom.multival.MultiValue)):
        if len(element_value) == 0:
            return None
        element_value = element_value[0]
    try:
        return float(element_value)
    except (TypeError, ValueError):
        return None


def _clip(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _metadata(dataset: Dataset, path: Path) -> dict[str, Any]:
    """The plain-Python metadata dict; a malformed field becomes None with a logged warning."""
    syntax = _transfer_syntax(dataset)

    def field(name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except (ImageReadError, *DICOM_ERRORS) as error:
            logger.warning("%s: ignoring malformed %s (%s: %s)", path, name, type(error).__name__, error)
            return None

    return {
        "view_position": field("ViewPosition", lambda: _text(dataset.get("ViewPosition"))),
        "patient_id": field("PatientID", lambda: _text(dataset.get("PatientID"))),
        "study_uid": field("StudyInstanceUID", lambda: _text(dataset.get("StudyInstanceUID"))),
        "series_uid": field("SeriesInstanceUID", lambda: _text(dataset.get("SeriesInstanceUID"))),
        "sop_uid": field("SOPInstanceUID", lambda: _text(dataset.get("SOPInstanceUID"))),
        "modality": field("Modality", lambda: _text(dataset.get("Modality"))),
        "photometric": field("PhotometricInterpretation", lambda: _text(dataset.get("PhotometricInterpretation"))),
        "rows": int(dataset.Rows),
        "cols": int(dataset.Columns),
        "bits_stored": field("BitsStored", lambda: _header_int(dataset, "BitsStored", path)),
        "transfer_syntax": syntax.name if syntax else None,
        "pixel_spacing": _pixel_spacing(dataset, path),
    }


def _pixel_spacing(dataset: Dataset, path: Path) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` from PixelSpacing, else ImagerPixelSpacing; malformed ones are skipped."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = dataset.get(keyword)
            if value is None or value == "":
                continue
            values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
            if len(values) != 2:
                raise ValueError(f"{len(values)} value(s), expected 2")
            spacing = (float(values[0]), float(values[1]))
            if not all(math.isfinite(v) and v > 0 for v in spacing):
                raise ValueError("spacing must be finite and positive")
            return spacing
        except (ImageReadError, *DICOM_ERRORS) as error:
            logger.warning(
                "%s: ignoring malformed %s %r (%s: %s)",
                path, keyword, _raw_value(dataset, keyword), type(error).__name__, error,
            )
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
