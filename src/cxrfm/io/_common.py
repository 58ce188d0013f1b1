"""Helpers shared by the PIL/NumPy reader (``image.py``) and the DICOM reader (``dicom.py``).

Kept apart so that ``image.py`` can dispatch to ``dicom.py`` without an import cycle. Everything
here either returns pixels in the toolkit's convention (float32, ``[0, 1]``, 0 = black) or raises
:class:`cxrfm.errors.ImageReadError` naming the file.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cxrfm.errors import ImageReadError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 80_000_000
"""Largest ``H * W`` any reader accepts (about 320 MB as float32); larger files are rejected."""

# Exceptions that third-party decoders (PIL, pydicom, numpy) raise for bad files. Caught only
# around calls into those libraries and re-raised as ImageReadError, so the caller sees one type.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    SyntaxError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
    ArithmeticError,
    struct.error,
    zlib.error,
)

# ITU-R BT.601 luma weights: the same ones PIL's convert("L") uses, applied here in float so
# 16-bit and 8-bit colour keep their precision instead of being rounded to 8 bits first.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@contextmanager
def guard_unexpected(path: str | os.PathLike[str], what: str = "cannot read the file") -> Iterator[None]:
    """Turn any exception that is not already an :class:`ImageReadError` into one naming ``path``.

    The last line of defence at each public reader: a decoder may raise an exception type no one
    listed (pydicom's own ``BytesLengthException``, a library bug on odd input), and a caller that
    skips unreadable files must still see one type. The original is chained as ``__cause__``.
    """
    try:
        yield
    except ImageReadError:
        raise
    except Exception as error:  # the point: nothing else escapes
        raise ImageReadError(path, f"{what} ({type(error).__name__}: {error})") from error


def check_readable_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path after checking it names a non-empty, readable regular file.

    Raises:
        ImageReadError: missing, a directory, not a regular file, 0 bytes, no read permission, or a
            path the operating system cannot look up (too long, invalid characters).
    """
    try:
        path = Path(path)
    except TypeError as error:
        raise ImageReadError(repr(path), f"not a file path ({error})") from error
    try:
        return _check_file(path)
    except OSError as error:
        raise ImageReadError(path, f"cannot look up the file ({error.strerror or error})") from error
    except ValueError as error:
        raise ImageReadError(path, f"invalid file path ({error})") from error


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(path, "is not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageReadError(path, "permission denied (file is not readable)")
    return path


def read_head(path: Path, num_bytes: int = 132) -> bytes:
    """First ``num_bytes`` of the file (used to sniff DICOM and NumPy magic numbers)."""
    try:
        with path.open("rb") as handle:
            return handle.read(num_bytes)
    except OSError as error:
        raise ImageReadError(path, f"cannot open file ({error.strerror or error})") from error


def check_size(path: Path, height: int, width: int, max_pixels: int) -> None:
    """Reject zero-size images and images over ``max_pixels`` before their pixels are decoded."""
    if height <= 0 or width <= 0:
        raise ImageReadError(path, f"image has zero size ({height}x{width} pixels)")
    if height * width > max_pixels:
        raise ImageReadError(
            path,
            f"image is {height}x{width} = {height * width} pixels, over the limit of "
            f"{max_pixels} (possible decompression bomb; raise max_pixels to allow it)",
        )


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` colour -> ``(H, W)`` float64 luma (BT.601), in the input's units."""
    return rgb[..., :3].astype(np.float64) @ _LUMA_WEIGHTS


def scale_by_full_range(pixels: np.ndarray, full_scale: float) -> np.ndarray:
    """Divide by the container's full-scale value (255, 65535, ...) -> float32 clipped to [0, 1]."""
    image = pixels.astype(np.float64) / float(full_scale)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def min_max_scale(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Linearly map the finite minimum to 0 and the finite maximum to 1 -> float32.

    A constant image maps to all zeros (no division by zero). Non-finite pixels (NaN, +-inf)
    become 0 with a logged warning; an image with no finite pixel at all is an error.
    """
    values = pixels.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageReadError(path, "image has no finite pixel values (all NaN or inf)")
    if not finite.all():
        logger.warning("%s: %d non-finite pixels set to 0", path, int((~finite).sum()))
    low = values[finite].min()
    high = values[finite].max()
    if high > low:
        image = (values - low) / (high - low)
    else:
        image = np.zeros_like(values)
    image[~finite] = 0.0
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def float_to_unit_range(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Float pixels: kept as they are when every finite value already lies in [0, 1], else min-max.

    Keeping in-range floats unchanged means an image the toolkit wrote (or already normalised)
    reads back identically instead of being contrast-stretched.
    """
    values = pixels.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageReadError(path, "image has no finite pixel values (all NaN or inf)")
    if values[finite].min() >= 0.0 and values[finite].max() <= 1.0:
        if not finite.all():
            logger.warning("%s: %d non-finite pixels set to 0", path, int((~finite).sum()))
        return np.where(finite, values, 0.0).astype(np.float32)
    return min_max_scale(values, path)


def array_to_unit_range(pixels: np.ndarray, path: Path) -> np.ndarray:
    """A gray ``(H, W)`` array of any real dtype -> float32 in [0, 1], by the dtype's rule.

    bool -> {0, 1}; uint8 -> /255; uint16 -> /65535; other integers -> min-max;
    floats -> :func:`float_to_unit_range`.
    """
    kind = pixels.dtype.kind
    if kind == "b":
        return pixels.astype(np.float32)
    if kind == "u" and pixels.dtype.itemsize <= 2:
        return scale_by_full_range(pixels, np.iinfo(pixels.dtype).max)
    if kind in "ui":
        return min_max_scale(pixels, path)
    if kind == "f":
        return float_to_unit_range(pixels, path)
    raise ImageReadError(path, f"unsupported pixel dtype {pixels.dtype} (expected bool, int or float)")


def nonzero_mask(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Raw gray pixels -> float32 {0, 1} with nonzero = 1. Non-finite values are an error."""
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise ImageReadError(path, "mask has non-finite values (NaN or inf)")
    return (pixels != 0).astype(np.float32)
