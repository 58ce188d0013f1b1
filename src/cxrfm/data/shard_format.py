"""The on-disk format of a shard folder: sample members, ``index.json``, shard-name patterns.

:func:`encode_sample` / :func:`decode_sample` turn a :class:`CXRSample` into WebDataset members and
back; :func:`read_shard_index` loads and checks ``index.json``; :func:`expand_pattern` expands a
brace pattern after bounding its size. Every problem with what is read is a
:class:`~cxrfm.errors.DatasetError` naming the file (and the sample key and member). Writing and
streaming live in :mod:`cxrfm.data.shards`, which re-exports the public names.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cxrfm.data.sample import CXRSample
from cxrfm.errors import DatasetError
from cxrfm.io._common import DEFAULT_MAX_PIXELS, LIBRARY_ERRORS

INDEX_FILE = "index.json"
INDEX_FORMAT = "cxrfm-shards/1"
ENCODINGS = ("png16", "png8", "jpeg")
JPEG_QUALITY = 95
# zlib level 1: at 1280x1280 16-bit about 3x faster to encode than Pillow's default (6) for ~6 % more
# bytes, and a little faster to decode; shard writing is encode-bound.
PNG_COMPRESS_LEVEL = 1

MAX_SHARDS = 100_000
"""Most shard names a pattern may expand to (counted before expanding: braceexpand builds every
range in memory, so ``{0..99999999999}`` would otherwise exhaust it)."""

_VIEW_MEMBER = re.compile(r"view([0-9]+)\.(png|jpg)")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # pipe:, http:, s3:, file: ... (not checked on disk)

# ------------------------------------------------------------------------------------- encoding


def encode_image(image: torch.Tensor | np.ndarray, encoding: str) -> tuple[str, bytes]:
    """``(1, H, W)`` or ``(H, W)`` in ``[0, 1]`` -> ``(extension, bytes)``."""
    pixels = np.clip(np.asarray(image, dtype=np.float64).reshape(image.shape[-2:]), 0.0, 1.0)
    buffer = io.BytesIO()
    if encoding == "png16":
        Image.fromarray(np.rint(pixels * 65535).astype(np.uint16)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return "png", buffer.getvalue()
    quantised = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    if encoding == "png8":
        quantised.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return "png", buffer.getvalue()
    if encoding == "jpeg":
        quantised.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return "jpg", buffer.getvalue()
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


class _MemberError(Exception):
    """A member's bytes are bad; the caller adds the shard, sample key and member name."""


def decode_image(data: bytes, source: str = "image bytes", size: tuple[int, int] | None = None) -> torch.Tensor:
    """PNG (8/16-bit) or JPEG bytes -> ``(1, H, W)`` float32 in ``[0, 1]``.

    Undecodable bytes, a size other than ``size`` (``(H, W)``, when given) or more than
    ``DEFAULT_MAX_PIXELS`` pixels raise :class:`DatasetError` naming ``source``; sizes are checked
    from the header, before the pixels are decoded.
    """
    try:
        return _decode_image(data, size)
    except _MemberError as error:
        raise DatasetError(source, str(error)) from None


def _decode_image(data: bytes, size: tuple[int, int] | None) -> torch.Tensor:
    return torch.from_numpy(_decode_pixels(data, size, _unit_gray)).unsqueeze(0)


def _unit_gray(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I"):  # 16-bit PNG opens as I;16 (or I on some Pillow builds)
        return np.ascontiguousarray(np.asarray(image, dtype=np.float32) / 65535.0)
    return np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)


def _binary(image: Image.Image) -> np.ndarray:
    return (np.asarray(image.convert("L")) >= 128).astype(np.float32)


def _decode_pixels(data: bytes, size: tuple[int, int] | None, convert) -> np.ndarray:
    """``convert(PIL image)`` of encoded ``data``; every failure is a _MemberError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if size is not None and (height, width) != tuple(size):
                    raise _MemberError(f"is {height}x{width} pixels, expected {size[0]}x{size[1]}")
                if width * height > DEFAULT_MAX_PIXELS or width * height == 0:
                    raise _MemberError(f"image is {height}x{width} pixels (accepted: 1 to {DEFAULT_MAX_PIXELS})")
                image.load()
                return convert(image)
    except _MemberError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _MemberError(f"decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise _MemberError(f"not a readable image (unrecognised or corrupt header; starts with {bytes(data[:8])!r})") from None
    except LIBRARY_ERRORS as error:  # truncated or corrupt data
        raise _MemberError(f"not a readable image ({type(error).__name__}: {error})") from None


def _encode_mask(mask: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((mask.reshape(mask.shape[-2:]).numpy() >= 0.5).astype(np.uint8) * 255).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def _decode_mask(data: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    return torch.from_numpy(_decode_pixels(data, size, _binary)).unsqueeze(0)


def _decode_labels(data: bytes, num_labels: int | None) -> torch.Tensor:
    """A 1-D real ``.npy`` array (``num_labels`` long when given) -> float32 tensor."""
    if not data.startswith(b"\x93NUMPY"):
        raise _MemberError(f"not a .npy array (starts with {bytes(data[:8])!r})")
    try:
        labels = np.load(io.BytesIO(data), allow_pickle=False)
    except LIBRARY_ERRORS as error:  # not .npy, truncated, or a pickled object array
        raise _MemberError(f"not a readable .npy array ({type(error).__name__}: {error})") from None
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "biuf":
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise _MemberError(f"expected a numeric label array, got dtype {kind}")
    if labels.ndim != 1 or (num_labels is not None and labels.shape[0] != num_labels):
        wanted = f"({num_labels},) for the index's {num_labels} label_names" if num_labels is not None else "1-D"
        raise _MemberError(f"label array has shape {labels.shape}, expected {wanted}")
    return torch.from_numpy(labels.astype(np.float32))


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _MemberError(f"not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None


def _decode_meta(data: bytes) -> dict[str, Any]:
    meta = _parse_json(_decode_text(data), _MemberError)
    if not isinstance(meta, dict):
        raise _MemberError(f"expected a JSON object, got {_json_kind(meta)}")
    return meta


def _parse_json(text: str, error_type) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise error_type(f"invalid JSON at line {error.lineno}, column {error.colno} ({error.msg})") from None
    except RecursionError:
        raise error_type("invalid JSON (nested too deeply)") from None


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def json_value(value: Any) -> Any:
    """Make meta values JSON-able: paths and unknown objects as strings, arrays as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)


def encode_sample(sample: CXRSample, encoding: str = "png16") -> dict[str, bytes]:
    """A :class:`CXRSample` -> ``{suffix: bytes}`` members of one WebDataset sample."""
    members: dict[str, bytes] = {}
    extension, members_image = encode_image(sample.image, encoding)
    members[f"image.{extension}"] = members_image
    for number, view in enumerate(sample.meta.get("extra_images", ()), start=1):
        members[f"view{number}.{extension}"] = encode_image(view, encoding)[1]
    if sample.lung_mask is not None:
        members["mask.png"] = _encode_mask(sample.lung_mask)
    if sample.labels is not None:
        buffer = io.BytesIO()
        np.save(buffer, sample.labels.numpy().astype(np.float32), allow_pickle=False)
        members["labels.npy"] = buffer.getvalue()
    if sample.findings is not None:
        members["findings.txt"] = sample.findings.encode("utf-8")
    if sample.impression is not None:
        members["impression.txt"] = sample.impression.encode("utf-8")
    meta = {key: value for key, value in sample.meta.items() if key != "extra_images"}
    members["meta.json"] = json.dumps(meta, default=json_value, ensure_ascii=False).encode("utf-8")
    return members


def decode_sample(
    raw: dict[str, Any], *, image_size: tuple[int, int] | None = None, num_labels: int | None = None
) -> CXRSample:
    """One WebDataset sample (``{"__key__": ..., suffix: bytes}``) -> :class:`CXRSample`.

    ``image_size`` (``(H, W)``) and ``num_labels``, when given, are what every sample must have
    (from the shard index). A missing image or ``meta.json`` member, or a member that does not
    decode or has the wrong size, dtype or shape, raises :class:`DatasetError` naming the shard
    (``source``), the sample key and the member. Members of unknown names are ignored.
    """
    url, key = str(raw.get("__url__", "shard")), raw.get("__key__")
    image_key = next((k for k in ("image.png", "image.jpg") if k in raw), None)
    if image_key is None:
        raise DatasetError(url, f"sample {key} has no image member (image.png or image.jpg)")
    if "meta.json" not in raw:
        raise DatasetError(url, f"sample {key} has no meta.json member (write_shards gives every sample one)")

    def decoded(name: str, decode, *args):
        try:
            return decode(raw[name], *args)
        except _MemberError as error:
            raise DatasetError(url, f"sample {key}: member {key}.{name}: {error}") from None

    meta = decoded("meta.json", _decode_meta)
    image = decoded(image_key, _decode_image, image_size)
    views = sorted((int(m.group(1)), name) for name in raw if isinstance(name, str) and (m := _VIEW_MEMBER.fullmatch(name)))
    if views:
        meta["extra_images"] = [decoded(name, _decode_image, image_size) for _, name in views]
    meta["shard_key"] = key
    return CXRSample(
        image=image,
        lung_mask=decoded("mask.png", _decode_mask, tuple(image.shape[-2:])) if "mask.png" in raw else None,
        labels=decoded("labels.npy", _decode_labels, num_labels) if "labels.npy" in raw else None,
        findings=decoded("findings.txt", _decode_text) if "findings.txt" in raw else None,
        impression=decoded("impression.txt", _decode_text) if "impression.txt" in raw else None,
        meta=meta,
    )


# ------------------------------------------------------------------------------------ index.json


def read_shard_index(folder: str | Path) -> dict[str, Any]:
    """Load ``folder/index.json``; missing, malformed or unfinished -> DatasetError.

    Malformed covers: not UTF-8, not JSON, not a JSON object, and any field a reader uses being
    absent or of the wrong type (shard names must be plain file names inside ``folder``).
    """
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise DatasetError(path, "shard index not found (a folder written by write_shards holds one)")
    return check_index(load_index(path), path, finished=True)


def load_index(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; unreadable, not UTF-8, not JSON or not an object -> DatasetError."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(path, f"cannot read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(path, f"not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None
    index = _parse_json(text, lambda reason: DatasetError(path, reason))
    if not isinstance(index, dict):
        raise DatasetError(path, f"expected a JSON object, got {_json_kind(index)}")
    return index


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_index(index: dict[str, Any], path: Path, *, finished: bool) -> dict[str, Any]:
    """Check the fields readers (and a resumed write) use; returns ``index``."""
    if index.get("format") != INDEX_FORMAT:
        raise DatasetError(path, f"not a cxrfm shard index (format {index.get('format')!r}, expected {INDEX_FORMAT!r})")
    if finished and index.get("complete") is not True:
        raise DatasetError(path, "shard writing did not finish; run the write again to resume it")

    def bad(field: str, expected: str) -> DatasetError:
        value = repr(index.get(field)) if field in index else "missing"
        return DatasetError(path, f"field {field!r} must be {expected} (got {value[:80]})")

    for field in ("shards", "label_names", "image_size", "encoding", "skipped"):
        if field not in index:
            raise DatasetError(path, f"field {field!r} is missing")
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise bad("shards", "a list")
    for number, shard in enumerate(shards):
        where = f"shards[{number}]"
        if not isinstance(shard, dict):
            raise DatasetError(path, f"field {where} must be an object (got {shard!r:.80})")
        name = shard.get("name")
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise DatasetError(path, f"field {where}.name must be a file name inside the folder (got {name!r:.80})")
        for field in ("num_samples", "bytes") + (() if finished else ("start", "end")):
            if not _is_count(shard.get(field)):
                raise DatasetError(path, f"field {where}.{field} must be a non-negative integer (got {shard.get(field)!r:.80})")
    labels = index.get("label_names")
    if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
        raise bad("label_names", "a list of strings")
    size = index.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) and v > 0 for v in size)):
        raise bad("image_size", "null or [H, W] with positive integers")
    if index.get("encoding") not in ENCODINGS:
        raise bad("encoding", f"one of {list(ENCODINGS)}")
    skipped = index.get("skipped")
    if not isinstance(skipped, list) or not all(isinstance(s, dict) and _is_count(s.get("position")) for s in skipped):
        raise bad("skipped", "a list of objects with a 'position'")
    if finished and not _is_count(index.get("num_samples")):
        raise bad("num_samples", "a non-negative integer")
    return index


# ---------------------------------------------------------------------------- shard names, tars


def tar_reason(error: Exception) -> str:
    """A short reason for an error from reading a tar stream (webdataset appends context to args)."""
    first = str(error.args[0]) if error.args else ""
    first = first.split(" @ ", 1)[0]  # webdataset appends " @ <file object>"
    if isinstance(error, FileNotFoundError):
        return "shard not found"
    if isinstance(error, tarfile.TarError):
        return f"not a readable tar archive, or truncated ({type(error).__name__}: {first})"
    if isinstance(error, ValueError) and "duplicate file name" in first:
        return f"a sample has two members of the same name ({first.split(':', 1)[0]})"
    return f"cannot read the shard ({type(error).__name__}: {first})"


def _expansion_bound(pattern: str) -> int | None:
    """An upper bound of the names ``braceexpand(pattern)`` makes, without making them (None: unbalanced)."""
    # One frame per open brace: finished alternatives' total, the current alternative's product
    # of nested groups, and the literal text (a group without commas or nested groups may be a range).
    stack: list[list[Any]] = [[0, 1, "", 0]]  # [total, current, text, nested/commas seen]
    position = 0
    while position < len(pattern):
        char = pattern[position]
        frame = stack[-1]
        if char == "\\":
            frame[2] += pattern[position : position + 2]
            position += 2
            continue
        if char == "{":
            stack.append([0, 1, "", 0])
        elif char == "}" and len(stack) > 1:
            total, current, text, structured = stack.pop()
            count = total + current
            match = None if structured else re.fullmatch(r"(-?[0-9]+|[^0-9])\.\.(-?[0-9]+|[^0-9])(?:\.\.(-?[0-9]+))?", text)
            if match:
                start, stop, step = match.group(1), match.group(2), match.group(3)
                numeric = start.lstrip("-").isdigit() and stop.lstrip("-").isdigit()
                low, high = (int(start), int(stop)) if numeric else (ord(start), ord(stop))
                count = abs(high - low) // max(1, abs(int(step or 1))) + 1
            stack[-1][1] *= count
            stack[-1][3] = 1
        elif char == "," and len(stack) > 1:
            frame[0] += frame[1]
            frame[1] = 1
            frame[3] = 1
        else:
            frame[2] += char
        position += 1
    return None if len(stack) > 1 else stack[0][1]


def expand_pattern(source: str) -> list[str]:
    """``a::b`` lists and ``{000000..000009}`` braces (and ``${VAR}`` from ``WDS_VAR``), as webdataset."""
    import braceexpand
    from webdataset.shardlists import envsubst

    urls: list[str] = []
    for part in source.split("::"):
        try:
            for _ in range(10):
                expanded = envsubst(part)
                if expanded == part:
                    break
                part = expanded
        except (AssertionError, KeyError) as error:
            raise DatasetError(source, f"pattern names an unset environment variable ({error})") from None
        bound = _expansion_bound(part)
        if bound is not None and len(urls) + bound > MAX_SHARDS:
            raise DatasetError(source, f"pattern expands to up to {bound} shard names (more than {MAX_SHARDS})")
        try:
            urls.extend(braceexpand.braceexpand(part))
        except ValueError as error:  # UnbalancedBracesError
            raise DatasetError(source, f"not a valid shard pattern ({error})") from None
    return urls
