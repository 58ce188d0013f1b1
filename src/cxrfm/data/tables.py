"""Reading dataset metadata tables (CSV, TSV, JSONL, each optionally gzipped) with errors that name
file and line.

Every adapter parses its published metadata through these helpers, so a missing column or a bad
row always raises :class:`~cxrfm.errors.DatasetError` naming the file and the line, never a
``KeyError`` from deep inside a loop. Text is UTF-8 (a leading byte-order mark is dropped, also in
``.gz`` files); a file that is not UTF-8, a corrupt ``.gz`` or an unreadable file raises
DatasetError naming the file (and the first bad line where there is one). ``.tsv`` / ``.tab`` files
are tab-separated.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cxrfm.errors import DatasetError

# Split names as published (MIMIC says "validate", CheXpert "valid") -> ours.
_SPLIT_ALIASES = {
    "training": "train",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "testing": "test",
}

_LATERAL_VIEWS = {"L", "LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}


def normalise_split(value: str | None) -> str | None:
    """``"validate"``/``"valid"``/``"validation"`` -> ``"val"`` etc.; empty -> None."""
    if value is None or not str(value).strip():
        return None
    key = str(value).strip().lower()
    return _SPLIT_ALIASES.get(key, key)


def normalise_view(value: str | None) -> str | None:
    """Upper-case view name with every lateral spelling mapped to ``"LATERAL"``; empty -> None."""
    if value is None or not str(value).strip():
        return None
    view = " ".join(str(value).strip().upper().split())
    return "LATERAL" if view in _LATERAL_VIEWS else view


def hash_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "") -> str:
    """Deterministic ``"train"``/``"val"``/``"test"`` assignment from a hash of ``salt + key``.

    Used where a dataset publishes no split (RSNA) or no validation split (NIH): hashing the
    patient id keeps every image of a patient in one split and never changes between runs.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha1(f"{salt}{key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


def find_table(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``; DatasetError naming the expected file when neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(root / name, "file not found (also looked for .gz)")


# What reading a text table can raise besides our own errors: undecodable bytes, a corrupt or
# truncated gzip stream (BadGzipFile is an OSError, a cut stream an EOFError), I/O errors.
_READ_ERRORS = (UnicodeDecodeError, OSError, EOFError, zlib.error)


def _is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def open_text(path: Path) -> io.TextIOBase:
    """Open a UTF-8 text file (BOM dropped), transparently un-gzipping ``*.gz``.

    Raises:
        DatasetError: missing file, or a file that cannot be opened (permission denied, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        if _is_gzip(path):
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as error:
        raise DatasetError(path, f"cannot open the file ({error.strerror or error})") from None


def read_error(path: Path, error: BaseException, line: int | None = None) -> DatasetError:
    """The DatasetError for an exception raised while reading ``path`` as text.

    A decoding error is reported at the first line that is not UTF-8 (found by re-reading the raw
    bytes: the text layer decodes in chunks, so its own position is not a line number).
    """
    if isinstance(error, UnicodeDecodeError):
        where = _first_undecodable_line(path)
        if where is not None:
            number, text = where
            return DatasetError(path, f"line {number}: not UTF-8 text ({text}); save the file as UTF-8")
        return DatasetError(path, f"not UTF-8 text ({error.reason}); save the file as UTF-8")
    if isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):
        return DatasetError(path, f"corrupt or truncated gzip file ({type(error).__name__}: {error})")
    if isinstance(error, OSError) and _is_gzip(path):
        return DatasetError(path, f"corrupt gzip file ({error})")
    prefix = f"line {line}: " if line else ""
    return DatasetError(path, f"{prefix}cannot read the file ({type(error).__name__}: {error})")


def _first_undecodable_line(path: Path) -> tuple[int, str] | None:
    """``(line number, what is wrong)`` of the first line that is not valid UTF-8, or None."""
    try:
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as handle:
            for number, raw in enumerate(handle, start=1):
                if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    return 1, "it starts with a UTF-16 byte-order mark"
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    return number, f"byte 0x{raw[error.start]:02x} at column {error.start + 1}"
    except _READ_ERRORS:
        return None
    return None


def _delimiter(path: Path) -> str:
    """Tab for ``.tsv`` / ``.tab`` (also gzipped), else comma."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return "\t" if suffixes and suffixes[-1] in (".tsv", ".tab") else ","


def iter_csv_rows(path: Path, required: Sequence[str] = ()) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Read a CSV's header now and stream its rows: ``(columns, iterator of (line_number, row))``.

    Streaming keeps memory flat for 377k-row tables (MIMIC). Raises DatasetError naming the file
    when it is missing or empty or a ``required`` column is absent (here), or naming the line when
    a row has a different number of fields than the header (while iterating).
    """
    path = Path(path)
    handle = open_text(path)
    reader = csv.reader(handle, delimiter=_delimiter(path))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        handle.close()
        raise DatasetError(path, "empty file (no header row)") from None
    except csv.Error as error:
        handle.close()
        raise DatasetError(path, f"line 1: not a readable CSV ({error})") from None
    except _READ_ERRORS as error:
        handle.close()
        raise read_error(path, error, 1) from None
    duplicated = sorted({name for name in header if name and header.count(name) > 1})
    if duplicated:
        handle.close()
        raise DatasetError(path, f"line 1: column name(s) {duplicated} appear more than once in the header")
    missing = [name for name in required if name not in header]
    if missing:
        handle.close()
        raise DatasetError(path, f"missing column(s) {missing}; found {header}")
    return header, _stream_rows(handle, reader, header, path)


def _stream_rows(handle: io.TextIOBase, reader: Any, header: list[str], path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with handle:
        try:
            for fields in reader:
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    raise DatasetError(path, f"line {reader.line_num}: expected {len(header)} fields, got {len(fields)}")
                yield reader.line_num, dict(zip(header, fields))
        except csv.Error as error:
            raise DatasetError(path, f"line {reader.line_num}: {error}") from None
        except _READ_ERRORS as error:
            raise read_error(path, error, reader.line_num + 1) from None


def read_csv_rows(path: Path, required: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """:func:`iter_csv_rows` with every row read: ``(columns, [(line_number, row), ...])``."""
    header, rows = iter_csv_rows(path, required)
    return header, list(rows)


def read_jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSON-lines file: ``[(line_number, object), ...]``; bad line -> DatasetError naming it."""
    path = Path(path)
    rows = []
    line_number = 0
    with open_text(path) as handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                value = _json_value(line, path, line_number)
                if not isinstance(value, dict):
                    kind = "null" if value is None else type(value).__name__
                    raise DatasetError(path, f"line {line_number}: expected a JSON object, got {kind}")
                rows.append((line_number, value))
        except _READ_ERRORS as error:
            raise read_error(path, error, line_number + 1) from None
    return rows


def _json_value(text: str, path: Path, line: int | None) -> Any:
    """``json.loads`` with DatasetError naming ``line`` (None: the error's line in a whole file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(path, f"line {line or error.lineno}: invalid JSON ({error.msg})") from None
    except (ValueError, RecursionError) as error:  # too deeply nested, an integer too long to parse
        where = f"line {line}: " if line else ""
        raise DatasetError(path, f"{where}invalid JSON ({type(error).__name__}: {error})") from None


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (or ``.gz``); missing, unreadable or not UTF-8 -> DatasetError."""
    path = Path(path)
    with open_text(path) as handle:
        try:
            return handle.read().splitlines()
        except _READ_ERRORS as error:
            raise read_error(path, error) from None


def read_json(path: Path) -> Any:
    """Load a JSON file; missing, unreadable or malformed -> DatasetError naming it (and the line)."""
    path = Path(path)
    with open_text(path) as handle:
        try:
            text = handle.read()
        except _READ_ERRORS as error:
            raise read_error(path, error) from None
    return _json_value(text, path, None)


LABEL_VALUES = (1.0, 0.0, -1.0)
"""The label values a table may hold (positive, negative, uncertain); blank / NaN is unknown."""


def parse_label_value(value: Any, source: Path, line: int, column: str) -> float:
    """One label cell -> float: ``1``/``0``/``-1`` (any numeric spelling), true/false, yes/no; blank -> NaN.

    Raises:
        DatasetError: a non-numeric value (``'maybe'``), a list or object, or a number other than
            1 / 0 / -1 (``2``, ``0.5``, ``inf``), naming the file, line and column.
    """
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "nan", "none", "null"):
            return math.nan
        if text in ("true", "yes"):
            return 1.0
        if text in ("false", "no"):
            return 0.0
        try:
            number = float(text)
        except ValueError:
            raise DatasetError(source, f"line {line}: column '{column}' has a non-numeric label {value!r}") from None
    else:
        raise DatasetError(
            source, f"line {line}: column '{column}' has a non-numeric label {value!r} ({type(value).__name__})"
        )
    if math.isnan(number):
        return math.nan
    if number not in LABEL_VALUES:
        raise DatasetError(
            source, f"line {line}: column '{column}' has label {value!r}; expected 1, 0, -1 (uncertain) or blank"
        )
    return number + 0.0  # -0.0 -> 0.0


def parse_number(value: Any, source: Path, line: int, column: str) -> float:
    """A numeric cell (a coordinate, a size) -> finite float; blank -> NaN.

    Raises:
        DatasetError: not a number, or infinite, naming the file, line and column.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) and not isinstance(value, float) and not (isinstance(value, str) and value.strip().lower() == "nan"):
        raise DatasetError(source, f"line {line}: column '{column}' is not a number ({value!r})")
    if math.isinf(number):
        raise DatasetError(source, f"line {line}: column '{column}' is not a finite number ({value!r})")
    return number


def blank_to_none(value: Any) -> Any:
    """Empty strings (how CSVs spell "unknown") -> None; other values unchanged."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def parse_age(value: Any) -> int | None:
    """``"58"``, ``"058Y"``, ``58.0`` -> 58; blank or unparseable -> None."""
    if value is None:
        return None
    text = str(value).strip().upper().rstrip("Y")
    try:
        age = float(text)
    except ValueError:
        return None
    return int(age) if math.isfinite(age) else None


def iter_split_names(split: str | Sequence[str] | None) -> Iterator[str]:
    """A split argument (one name or several) -> normalised names."""
    if split is None:
        return
    names = [split] if isinstance(split, str) else list(split)
    for name in names:
        normalised = normalise_split(name)
        if normalised is not None:
            yield normalised
