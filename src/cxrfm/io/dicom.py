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

Rejected with :class:`cxrfm.errors.ImageReadError` (message names the file): not DICOM, no pixel
data, missing Rows/Columns, zero size, more than ``max_pixels`` pixels, multi-frame
(``NumberOfFrames > 1``), compressed with no decoder installed, undecodable or truncated pixel data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder

from cxrfm.errors import ImageReadError
from cxrfm.io._common import (
    DEFAULT_MAX_PIXELS,
    LIBRARY_ERRORS,
    check_readable_file,
    check_size,
    luminance,
    min_max_scale,
)

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


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
    stored, dataset = decode_dicom_pixels(path, max_pixels=max_pixels)
    path = Path(path)
    try:
        image, voi = _to_unit_range(stored, dataset, path)
    except ImageReadError:
        raise
    except LIBRARY_ERRORS as error:
        reason = f"cannot apply the DICOM LUTs ({type(error).__name__}: {error})"
        raise ImageReadError(path, reason) from error
    meta = _metadata(dataset)
    meta["voi"] = voi
    return image, meta


def decode_dicom_pixels(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, Dataset]:
    """Decode the stored pixel values of a single-frame DICOM, before any LUT.

    Returns:
        ``(stored, dataset)``: ``stored`` is ``(H, W)`` for monochrome / palette data or
        ``(H, W, 3)`` RGB for colour data, in the file's own dtype and units.
    """
    path = check_readable_file(path)
    dataset = _read_dataset(path)
    _check_header(dataset, path, max_pixels)
    _check_decoder_available(dataset, path)
    try:
        stored = dataset.pixel_array
    except LIBRARY_ERRORS as error:
        syntax = _transfer_syntax(dataset)
        raise ImageReadError(
            path,
            f"cannot decode the pixel data ({syntax.name if syntax else 'unknown transfer syntax'}): "
            f"{type(error).__name__}: {error}",
        ) from error
    if stored.ndim not in (2, 3) or (stored.ndim == 3 and stored.shape[-1] != 3):
        raise ImageReadError(path, f"unexpected decoded pixel array shape {stored.shape}")
    return stored, dataset


def _read_dataset(path: Path) -> Dataset:
    """Parse the file; files named ``.dcm`` without the 128-byte preamble are retried with force."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as error:
        if path.suffix.lower() not in DICOM_SUFFIXES:
            raise ImageReadError(path, f"not a DICOM file ({error})") from error
    except LIBRARY_ERRORS as error:
        raise ImageReadError(path, f"corrupt DICOM file ({type(error).__name__}: {error})") from error
    try:
        dataset = pydicom.dcmread(path, force=True)
    except LIBRARY_ERRORS as error:
        raise ImageReadError(path, f"not a DICOM file ({type(error).__name__}: {error})") from error
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no pixel data)")
    return dataset


def _check_header(dataset: Dataset, path: Path, max_pixels: int) -> None:
    """Reject what cannot become one ``(H, W)`` image, before any pixel is decoded."""
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise ImageReadError(path, "DICOM has no pixel data (no PixelData element)")
    rows, cols = dataset.get("Rows"), dataset.get("Columns")
    if rows is None or cols is None:
        raise ImageReadError(path, "DICOM lacks Rows/Columns, so its pixel data cannot be shaped")
    num_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if num_frames > 1:
        raise ImageReadError(
            path, f"multi-frame DICOM ({num_frames} frames); only single-frame images are supported"
        )
    check_size(path, int(rows), int(cols), max_pixels)


def _transfer_syntax(dataset: Dataset) -> pydicom.uid.UID | None:
    file_meta = getattr(dataset, "file_meta", None)
    return None if file_meta is None else file_meta.get("TransferSyntaxUID")


def _check_decoder_available(dataset: Dataset, path: Path) -> None:
    """Name the transfer syntax and the packages to install when no plug-in can decode it."""
    syntax = _transfer_syntax(dataset)
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
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if stored.ndim == 3:
        full_scale = 2 ** int(dataset.get("BitsStored", 8)) - 1
        return _clip(luminance(stored) / full_scale), "colour"
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, dataset)
        return _clip(luminance(rgb) / np.iinfo(rgb.dtype).max), "colour"
    if stored.dtype.kind == "f":
        image, voi = min_max_scale(stored, path), "minmax"
    else:
        image, voi = _apply_voi(apply_modality_lut(stored, dataset), dataset, path)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32), voi


def _apply_voi(values: np.ndarray, dataset: Dataset, path: Path) -> tuple[np.ndarray, str]:
    if dataset.get("VOILUTSequence"):
        # LUT input must be integer indices; rescaled values are whole numbers for integer slopes.
        indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return _clip(apply_voi(indices, dataset) / (2**bits - 1)), "lut"
    window = _window(dataset, path)
    if window is not None:
        center, width, function = window
        return _clip(_windowed(values.astype(np.float64), center, width, function)), "window"
    return min_max_scale(values, path), "minmax"


def _window(dataset: Dataset, path: Path) -> tuple[float, float, str] | None:
    """First Window Center / Width pair and the VOI LUT Function, or None when absent / invalid."""
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    center, width = _first_value(dataset.WindowCenter), _first_value(dataset.WindowWidth)
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if center is None or width is None:
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


def _metadata(dataset: Dataset) -> dict[str, Any]:
    syntax = _transfer_syntax(dataset)
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    return {
        "view_position": _text(dataset.get("ViewPosition")),
        "patient_id": _text(dataset.get("PatientID")),
        "study_uid": _text(dataset.get("StudyInstanceUID")),
        "series_uid": _text(dataset.get("SeriesInstanceUID")),
        "sop_uid": _text(dataset.get("SOPInstanceUID")),
        "modality": _text(dataset.get("Modality")),
        "photometric": _text(dataset.get("PhotometricInterpretation")),
        "rows": int(dataset.Rows),
        "cols": int(dataset.Columns),
        "bits_stored": int(dataset.BitsStored) if "BitsStored" in dataset else None,
        "transfer_syntax": syntax.name if syntax else None,
        "pixel_spacing": tuple(float(value) for value in spacing[:2]) if spacing else None,
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
