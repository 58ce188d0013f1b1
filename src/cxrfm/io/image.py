"""Image I/O: every file format -> one pixel convention, and resizing that masks and boxes can follow.

Pixel convention
----------------
:func:`read_image` returns a NumPy array of shape ``(H, W)``, dtype ``float32``, values in
``[0, 1]``, 0 = black as displayed (DICOM MONOCHROME1 is inverted so bone is white). Datasets
turn it into a ``(1, H, W)`` tensor per sample.
:func:`read_mask` returns ``(H, W)`` float32 in ``{0, 1}`` (any nonzero stored value -> 1).

Normalisation per format (decoded with Pillow unless stated)
------------------------------------------------------------
- 1-bit (mode ``1``): ``{0, 1}``.
- 8-bit gray (``L``, 1/2/4-bit gray PNGs which Pillow expands to ``L``): ``value / 255``.
- Gray + alpha (``LA``, ``La``): the gray channel ``/ 255``; alpha is dropped, not composited.
- 16-bit containers (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: 16-bit PNG, 16-bit TIFF):
  ``value / 65535``. Exception: a TIFF carrying a ``MaxSampleValue`` tag (e.g. 12-bit data stored
  in 16 bits) is divided by that value instead. PNG stores 16-bit samples scaled to full range by
  specification, so PNG always uses 65535. 16-bit PGM (maxval > 255) likewise: Pillow rescales
  it to ``0..65535``, so it is divided by 65535.
- 32-bit integer (``I``, e.g. int32 TIFF): min-max (finite minimum -> 0, maximum -> 1).
- 32-bit float (``F``, float TIFF): unchanged when every finite value already lies in ``[0, 1]``
  (so normalised images read back identically), otherwise min-max.
- Colour (``RGB``, ``RGBA``, ``RGBX``, ``P``/``PA`` palette expanded, ``CMYK``, ``YCbCr``, ...):
  Pillow converts to 8-bit RGB, then BT.601 luma ``(0.299 R + 0.587 G + 0.114 B) / 255`` in float
  (gray stored as RGB reads exactly as gray). Alpha is dropped, not composited. Pillow itself
  decodes 16-bit colour PNGs to 8-bit RGB, so those lose their low 8 bits.
- ``.npy`` (2-D arrays only, loaded without pickle): bool -> ``{0, 1}``; uint8 -> ``/ 255``;
  uint16 -> ``/ 65535``; other integers -> min-max; floats -> the ``F`` rule above.
- DICOM (suffix ``.dcm`` / ``.dicom`` or the ``DICM`` magic at byte 128, so suffix-less files work):
  see :mod:`cxrfm.io.dicom` (Modality LUT, VOI LUT / window, MONOCHROME1 inverted).

Pixels are taken as stored: EXIF orientation and ICC profiles are not applied, so masks drawn on
the stored pixel grid stay aligned. Min-max maps a constant image to all zeros. Non-finite float
pixels become 0 (with a logged warning); an image with no finite pixel is an error.

Errors
------
Every failure raises :class:`cxrfm.errors.ImageReadError` whose message names the file and the
reason (an exception of any other type from a decoder is wrapped into one, the original chained as
``__cause__``): missing file, directory, 0-byte file, no read permission, unknown format, truncated or
corrupt data, zero-size image, non-2-D ``.npy``, multi-frame files (animated GIF/PNG/WebP,
multi-page TIFF: **rejected**, never silently reduced to the first frame), and images larger than
``max_pixels`` or Pillow's ``Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb warning is turned
into an error; to read bigger images raise both). Sizes are checked from the header, before the
pixels are decoded.

Resizing
--------
:func:`resize_image` / :func:`resize_mask` take NumPy ``(..., H, W)`` or torch ``(..., H, W)`` and
return the same type. ``mode="pad"`` keeps the aspect ratio, centres and pads with 0 (black);
:func:`fit_geometry` returns that transform so boxes and landmarks can follow it.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cxrfm.errors import ImageReadError
from cxrfm.io._common import (
    DEFAULT_MAX_PIXELS,
    LIBRARY_ERRORS,
    array_to_unit_range,
    check_readable_file,
    check_size,
    guard_unexpected,
    luminance,
    nonzero_mask,
    read_head,
    scale_by_full_range,
)
from cxrfm.io.dicom import DICOM_SUFFIXES, decode_dicom_pixels, read_dicom_image

logger = logging.getLogger(__name__)

ResizeMode = Literal["pad", "stretch"]
Interpolation = Literal["area", "bilinear", "nearest"]
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IMAGE_MAGICS = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
)
_TIFF_MAX_SAMPLE_VALUE_TAG = 281
_WRITE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


# ----------------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any supported image file as ``(H, W)`` float32 in ``[0, 1]``, 0 = black.

    Args:
        path: PNG, JPEG, TIFF, BMP, GIF, ... (anything Pillow opens), ``.npy`` or DICOM.
        max_pixels: largest ``H * W`` accepted; checked from the header before decoding.

    Returns:
        ``(H, W)`` float32, C-contiguous. Normalisation per format: see the module docstring.

    Raises:
        ImageReadError: any failure, with the file and the reason in the message.
    """
    path = check_readable_file(path)
    with guard_unexpected(path):
        kind = _file_kind(path)
        if kind == "dicom":
            return read_dicom_image(path, max_pixels=max_pixels)
        pixels, full_scale = _decode_npy(path, max_pixels) if kind == "npy" else _decode_pil(path, max_pixels)
        if full_scale is not None:
            image = scale_by_full_range(pixels, full_scale)
        else:
            image = array_to_unit_range(pixels, path)
        return np.ascontiguousarray(image, dtype=np.float32)


def read_mask(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a binary mask as ``(H, W)`` float32 in ``{0, 1}``: any nonzero stored value -> 1.

    Works on the stored values before any scaling, so 0/1, 0/255 and 0/65535 masks, palette and
    colour masks (nonzero luma -> 1) and DICOM masks (nonzero stored value -> 1) all read the same.

    Raises:
        ImageReadError: as :func:`read_image`, plus non-finite values in a float mask.
    """
    path = check_readable_file(path)
    with guard_unexpected(path):
        kind = _file_kind(path)
        if kind == "dicom":
            stored, _ = decode_dicom_pixels(path, max_pixels=max_pixels)
            pixels = luminance(stored) if stored.ndim == 3 else stored
        elif kind == "npy":
            pixels, _ = _decode_npy(path, max_pixels)
        else:
            pixels, _ = _decode_pil(path, max_pixels)
        return np.ascontiguousarray(nonzero_mask(pixels, path))


def _file_kind(path: Path) -> Literal["dicom", "npy", "pil"]:
    head = read_head(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or head[128:132] == b"DICM":
        return "dicom"
    if suffix == ".npy" or head.startswith(_NPY_MAGIC):
        return "npy"
    return "pil"


def _decode_npy(path: Path, max_pixels: int) -> tuple[np.ndarray, float | None]:
    """A 2-D ``.npy`` array in its own dtype; the shape is checked before the data is read."""
    try:
        # Memory-mapping reads only the header, so shape and size are checked before loading.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except LIBRARY_ERRORS as error:
        raise ImageReadError(path, f"not a readable .npy array ({type(error).__name__}: {error})") from error
    if not isinstance(mapped, np.ndarray):
        raise ImageReadError(path, "not a single .npy array")
    if mapped.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D (H, W) array, got shape {mapped.shape}")
    check_size(path, mapped.shape[0], mapped.shape[1], max_pixels)
    if mapped.dtype.kind not in "buif":
        raise ImageReadError(path, f"unsupported array dtype {mapped.dtype} (expected bool, int or float)")
    try:
        return np.array(mapped), None
    except LIBRARY_ERRORS as error:
        raise ImageReadError(path, f"cannot load .npy data ({type(error).__name__}: {error})") from error


def _decode_pil(path: Path, max_pixels: int) -> tuple[np.ndarray, float | None]:
    """Gray pixels in their stored units and the full-scale value to divide by (None: dtype rule)."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning still means
            # "probably a bomb", so it is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                check_size(path, height, width, max_pixels)
                num_frames = getattr(image, "n_frames", 1)
                if num_frames > 1:
                    raise ImageReadError(
                        path, f"multi-frame image ({num_frames} frames); only single images are supported"
                    )
                image.load()
                return _gray_pixels(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(
            path, f"decompression bomb ({error}); raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
        ) from error
    except UnidentifiedImageError as error:
        raise ImageReadError(path, _unidentified_reason(read_head(path, 32))) from error
    except LIBRARY_ERRORS as error:
        reason = f"corrupt or truncated image data ({type(error).__name__}: {error})"
        raise ImageReadError(path, reason) from error


def _unidentified_reason(head: bytes) -> str:
    """Why Pillow could not open a file: its magic number tells a broken image from a non-image."""
    if head.startswith(_PNG_MAGIC):
        width, height = struct.unpack(">II", head[16:24]) if len(head) >= 24 else (1, 1)
        if width == 0 or height == 0:
            return f"image has zero size ({height}x{width} pixels in the PNG header)"
        return "corrupt PNG header"
    for magic, name in _IMAGE_MAGICS:
        if head.startswith(magic):
            return f"corrupt or unsupported {name} header"
    return "not a recognised image format (PNG, JPEG, TIFF, DICOM, .npy, ...)"


def _gray_pixels(image: Image.Image) -> tuple[np.ndarray, float | None]:
    """A decoded Pillow image -> ``(H, W)`` gray array and its full-scale value (see module doc)."""
    mode = image.mode
    if mode == "I" and image.format == "PPM":
        # Pillow rescales 16-bit PGM (any maxval > 255) to 0..65535 in an int32 container.
        return np.asarray(image), 65535.0
    if mode in ("1", "L", "I", "F"):
        # bool, uint8, int32, float32: the dtype rule of array_to_unit_range applies.
        return np.asarray(image), None
    if mode in ("LA", "La"):
        return np.asarray(image)[..., 0], None
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16), _tiff_max_sample_value(image) or 65535.0
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return luminance(np.asarray(image)), 255.0
    # Palette, CMYK, YCbCr, LAB, HSV, ...: Pillow's own conversion to RGB (palette with its alpha).
    rgb = image.convert("RGBA" if mode in ("P", "PA") else "RGB")
    return luminance(np.asarray(rgb)), 255.0


def _tiff_max_sample_value(image: Image.Image) -> float | None:
    """The TIFF MaxSampleValue tag when it declares fewer bits than the 16-bit container."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    value = tags.get(_TIFF_MAX_SAMPLE_VALUE_TAG)
    if isinstance(value, tuple):
        value = value[0] if value else None
    if value is None or not 0 < int(value) < 65535:
        return None
    return float(value)


# ---------------------------------------------------------------------------------------- resizing


def fit_geometry(
    in_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Where an ``in_size`` image lands inside ``out_size`` under ``mode="pad"``.

    The image is scaled by ``scale = min(out_h / in_h, out_w / in_w)`` to ``(new_h, new_w)``
    (rounded, at least 1 pixel) and pasted with its top-left corner at ``(top, left)``, centred
    (odd leftovers go to the bottom/right). In continuous pixel coordinates (0 at the top-left
    edge, so pixel ``i`` spans ``[i, i + 1)``; box corners live here) a point ``(y, x)`` maps to
    ``(top + y * new_h / in_h, left + x * new_w / in_w)``; ``new / in`` equals ``scale`` up to
    the rounding of the new size. A pixel index ``i`` (its centre is ``i + 0.5``) therefore maps
    to ``top + (i + 0.5) * new_h / in_h - 0.5``.

    Args:
        in_size: ``(H, W)`` of the input.
        out_size: ``(H, W)`` of the output canvas.

    Returns:
        ``(scale, (top, left), (new_h, new_w))``.
    """
    in_height, in_width = _positive_size(in_size, "in_size")
    out_height, out_width = _positive_size(out_size, "out_size")
    scale = min(out_height / in_height, out_width / in_width)
    new_height = min(out_height, max(1, math.floor(in_height * scale + 0.5)))
    new_width = min(out_width, max(1, math.floor(in_width * scale + 0.5)))
    top = (out_height - new_height) // 2
    left = (out_width - new_width) // 2
    return scale, (top, left), (new_height, new_width)


def resize_image(
    image: ArrayOrTensor,
    size: tuple[int, int],
    mode: ResizeMode = "pad",
    interpolation: Interpolation = "area",
) -> ArrayOrTensor:
    """Resize NumPy ``(..., H, W)`` or torch ``(..., H, W)`` to ``size = (H', W')``.

    Args:
        image: gray image(s); the last two dims are resized, leading dims are kept.
        size: output ``(H', W')``; any shape, non-square either way.
        mode: ``"pad"`` keeps the aspect ratio, centres the image and pads with 0 (black), as
            :func:`fit_geometry` describes; ``"stretch"`` scales each axis to fit exactly.
        interpolation: ``"area"`` averages input pixels when shrinking both axes (box filter via
            adaptive average pooling) and is bilinear otherwise; ``"bilinear"`` is antialiased when
            shrinking; ``"nearest"`` picks the nearest pixel (PyTorch ``nearest-exact``).

    Returns:
        Same type, device and dtype as ``image``, shape ``(..., H', W')``. Integer inputs are
        rounded back to their dtype; bool inputs thresholded at 0.5.
    """
    if mode not in ("pad", "stretch"):
        raise ValueError(f"resize mode must be 'pad' or 'stretch', got {mode!r}")
    if interpolation not in ("area", "bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'area', 'bilinear' or 'nearest', got {interpolation!r}")
    out_height, out_width = _positive_size(size, "size")
    tensor, restore = _to_tensor(image)
    work = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.to(torch.float32)
    if mode == "stretch":
        resized = _resample(work, (out_height, out_width), interpolation)
    else:
        in_size = (work.shape[-2], work.shape[-1])
        _, (top, left), (new_height, new_width) = fit_geometry(in_size, (out_height, out_width))
        resized = _resample(work, (new_height, new_width), interpolation)
        padding = (left, out_width - new_width - left, top, out_height - new_height - top)
        resized = F.pad(resized, padding, value=0.0)
    return restore(_cast_like(resized, tensor.dtype))


def resize_mask(mask: ArrayOrTensor, size: tuple[int, int], mode: ResizeMode = "pad") -> ArrayOrTensor:
    """Resize a binary mask with the same geometry as :func:`resize_image`; the result is {0, 1}.

    The mask is resampled as a coverage fraction (``"area"`` interpolation) and thresholded at
    ``>= 0.5``, which keeps edges smoother than nearest-neighbour while staying binary. Integer
    and bool masks are binarised first (nonzero -> 1, as :func:`read_mask`); float masks are used
    as they are (``{0, 1}`` or soft values in ``[0, 1]``). Padding is 0.

    Returns:
        Same type and device as ``mask``, shape ``(..., H', W')``, dtype float32 (or the input's
        float dtype), values in ``{0, 1}``.
    """
    tensor, restore = _to_tensor(mask)
    if tensor.dtype.is_floating_point:
        coverage = tensor
    else:
        coverage = (tensor != 0).to(torch.float32)
    resized = resize_image(coverage, size, mode=mode, interpolation="area")
    return restore((resized >= 0.5).to(coverage.dtype))


def _positive_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(side) != side or side <= 0 for side in size):
        raise ValueError(f"{name} must be a (H, W) pair of positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _to_tensor(image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """View the input as a tensor, with the function that turns a result back into its type."""
    if isinstance(image, torch.Tensor):
        tensor, restore = image, (lambda result: result)
    elif isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        restore = lambda result: result.numpy()  # noqa: E731 - a one-line closure reads best here
    else:
        raise TypeError(f"expected a numpy array or torch tensor, got {type(image).__name__}")
    if tensor.ndim < 2:
        raise ValueError(f"expected an image of shape (..., H, W), got shape {tuple(tensor.shape)}")
    return tensor, restore


def _resample(tensor: torch.Tensor, size: tuple[int, int], interpolation: Interpolation) -> torch.Tensor:
    """``(..., H, W)`` float -> ``(..., H', W')`` with F.interpolate (which wants ``(N, C, H, W)``)."""
    in_height, in_width = tensor.shape[-2:]
    if (in_height, in_width) == size:
        return tensor.clone()
    batch = tensor.reshape(-1, 1, in_height, in_width)
    shrinking = size[0] <= in_height and size[1] <= in_width
    if interpolation == "nearest":
        resized = F.interpolate(batch, size=size, mode="nearest-exact")
    elif interpolation == "area" and shrinking:
        resized = F.interpolate(batch, size=size, mode="area")
    else:
        # antialias only changes the shrinking axes; upscaling axes are plain bilinear.
        resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.reshape(*tensor.shape[:-2], *size)


def _cast_like(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == tensor.dtype:
        return tensor
    if dtype == torch.bool:
        return tensor >= 0.5
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        return tensor.round().clamp(info.min, info.max).to(dtype)
    return tensor.to(dtype)


# ----------------------------------------------------------------------------------------- writing


def write_image(path: str | os.PathLike[str], image: np.ndarray | torch.Tensor, bits: int = 8) -> None:
    """Write a ``[0, 1]`` gray image as an 8- or 16-bit PNG / TIFF, or an 8-bit JPEG (by suffix).

    Values are quantised as ``round(x * (2**bits - 1))``, so a 16-bit PNG or TIFF written from
    ``k / 65535`` values reads back exactly with :func:`read_image`. JPEG is lossy (quality 95).

    Args:
        path: output file; suffix ``.png``, ``.tif``/``.tiff`` or ``.jpg``/``.jpeg``.
        image: NumPy or torch, ``(H, W)`` or with leading singleton dims (``(1, H, W)``); float in
            ``[0, 1]`` (values within 1e-3 outside are clipped) or bool.
        bits: 8 or 16 (16 not for JPEG).

    Raises:
        ValueError: unsupported suffix or bit depth, wrong shape, non-finite or out-of-range values.
        OSError: the file cannot be written (for example, its folder does not exist).
    """
    path = Path(path)
    file_format = _WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"{path}: cannot write suffix {path.suffix!r}; use one of {sorted(_WRITE_FORMATS)}")
    if bits not in (8, 16):
        raise ValueError(f"{path}: bits must be 8 or 16, got {bits!r}")
    if bits == 16 and file_format == "JPEG":
        raise ValueError(f"{path}: JPEG stores 8 bits only; write 16-bit images as PNG or TIFF")
    pixels = _unit_range_pixels(image, path)
    full_scale = 2**bits - 1
    quantised = np.rint(pixels * full_scale).astype(np.uint8 if bits == 8 else np.uint16)
    options = {"quality": 95} if file_format == "JPEG" else {}
    Image.fromarray(quantised).save(path, format=file_format, **options)


def _unit_range_pixels(image: np.ndarray | torch.Tensor, path: Path) -> np.ndarray:
    """Validate and squeeze an image to write into a float64 ``(H, W)`` array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    pixels = np.asarray(image)
    while pixels.ndim > 2 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ValueError(f"{path}: expected a non-empty (H, W) image, got shape {np.shape(image)}")
    if pixels.dtype.kind not in "bf":
        raise ValueError(f"{path}: expected float pixels in [0, 1] (or bool), got dtype {pixels.dtype}")
    pixels = pixels.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise ValueError(f"{path}: image has non-finite values")
    if pixels.min() < -1e-3 or pixels.max() > 1.0 + 1e-3:
        raise ValueError(f"{path}: values span [{pixels.min():g}, {pixels.max():g}], expected [0, 1]")
    return np.clip(pixels, 0.0, 1.0)
