"""Reading dataset metadata tables (CSV, gzipped CSV, JSONL) with errors that name file and line.

Every adapter parses its published metadata through these helpers, so a missing column or a bad
row always raises :class:`~cxrfm.errors.DatasetError` naming the file and the line, never a
``KeyError`` from deep inside a loop.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
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


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently un-gzipping ``*.gz``; missing file -> DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def iter_csv_rows(path: Path, required: Sequence[str] = ()) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Read a CSV's header now and stream its rows: ``(columns, iterator of (line_number, row))``.

    Streaming keeps memory flat for 377k-row tables (MIMIC). Raises DatasetError naming the file
    when it is missing or empty or a ``required`` column is absent (here), or naming the line when
    a row has a different number of fields than the header (while iterating).
    """
    path = Path(path)
    handle = open_text(path)
    reader = csv.reader(handle)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        handle.close()
        raise DatasetError(path, "empty file (no header row)") from None
    except (csv.Error, UnicodeDecodeError) as error:
        handle.close()
        raise DatasetError(path, f"line 1: not a readable CSV ({error})") from None
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
        except (csv.Error, UnicodeDecodeError) as error:
            raise DatasetError(path, f"line {reader.line_num}: {error}") from None


def read_csv_rows(path: Path, required: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """:func:`iter_csv_rows` with every row read: ``(columns, [(line_number, row), ...])``."""
    header, rows = iter_csv_rows(path, required)
    return header, list(rows)


def read_jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSON-lines file: ``[(line_number, object), ...]``; bad line -> DatasetError naming it."""
    path = Path(path)
    rows = []
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(path, f"line {line_number}: invalid JSON ({error.msg})") from None
            if not isinstance(value, dict):
                raise DatasetError(path, f"line {line_number}: expected a JSON object, got {type(value).__name__}")
            rows.append((line_number, value))
    return rows


def read_json(path: Path) -> Any:
    """Load a JSON file; missing or malformed -> DatasetError naming it."""
    path = Path(path)
    with open_text(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise DatasetError(path, f"line {error.lineno}: invalid JSON ({error.msg})") from None


def parse_label_value(value: Any, source: Path, line: int, column: str) -> float:
    """One label cell -> float: ``1``/``0``/``-1`` (any numeric spelling), true/false; blank -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    if text in ("", "nan", "none", "null"):
        return math.nan
    if text in ("true", "yes"):
        return 1.0
    if text in ("false", "no"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise DatasetError(source, f"line {line}: column '{column}' has a non-numeric label {value!r}") from None


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
        return int(float(text))
    except ValueError:
        return None


def iter_split_names(split: str | Sequence[str] | None) -> Iterator[str]:
    """A split argument (one name or several) -> normalised names."""
    if split is None:
        return
    names = [split] if isinstance(split, str) else list(split)
    for name in names:
        normalised = normalise_split(name)
        if normalised is not None:
            yield normalised
