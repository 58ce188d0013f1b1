"""A generic CSV or JSON-lines manifest: one row per image, paths relative to the manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.labels import canonical_finding
from cxrfm.data.reports import findings_and_impression
from cxrfm.data.tables import (
    blank_to_none,
    normalise_split,
    normalise_view,
    parse_label_value,
    read_csv_rows,
    read_jsonl_rows,
)
from cxrfm.errors import DatasetError

# Columns with a fixed meaning; every other column is a label column or goes into meta.
RESERVED_COLUMNS = ("image", "mask", "split", "findings", "impression", "report", "view", "patient_id", "study_id")

_MANIFEST_NAMES = (
    "manifest.csv",
    "manifest.jsonl",
    "manifest.tsv",
    "manifest.csv.gz",
    "manifest.jsonl.gz",
    "manifest.tsv.gz",
)
# Columns that must hold text (or be blank / null) when present.
_TEXT_COLUMNS = ("findings", "impression", "report", "split", "view")


def resolve_manifest(path: Path) -> Path:
    """A manifest file, or a folder holding ``manifest.csv`` / ``manifest.jsonl``."""
    if path.is_dir():
        for name in _MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise DatasetError(path, f"no manifest ({' / '.join(_MANIFEST_NAMES)}) in this folder")
    if not path.is_file():
        raise DatasetError(path, "manifest not found")
    return path


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, Mapping[str, Any]]]]:
    suffixes = [s.lower() for s in path.suffixes]
    if ".jsonl" in suffixes or ".ndjson" in suffixes:
        rows = read_jsonl_rows(path)
        columns = list(dict.fromkeys(key for _, row in rows for key in row))
        if rows and "image" not in columns:
            raise DatasetError(path, f"missing column(s) ['image']; found {columns}")
        return columns, rows
    if ".csv" in suffixes or ".tsv" in suffixes or ".tab" in suffixes:
        return read_csv_rows(path, required=("image",))
    raise DatasetError(path, "unknown manifest format: use .csv, .tsv or .jsonl (optionally .gz)")


def _label_columns(columns: Sequence[str], declared: Sequence[str] | None, path: Path) -> list[str]:
    if declared is not None:
        missing = [c for c in declared if c not in columns]
        if missing:
            raise DatasetError(path, f"label column(s) {missing} not found; columns are {list(columns)}")
        return list(declared)
    return [c for c in columns if c not in RESERVED_COLUMNS and canonical_finding(c) is not None]


def _resolve(base: Path, value: Any, path: Path, line: int, column: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(path, f"line {line}: column '{column}' is empty or not a path ({value!r})")
    if "\x00" in value:
        raise DatasetError(path, f"line {line}: column '{column}' holds a NUL character ({value!r})")
    candidate = Path(value.strip())
    return candidate if candidate.is_absolute() else base / candidate


def _check_text_columns(row: Mapping[str, Any], path: Path, line: int) -> None:
    """JSONL can hold any JSON type: report text, split and view must be strings (or null)."""
    for column in _TEXT_COLUMNS:
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            raise DatasetError(
                path, f"line {line}: field '{column}' must be a string, got {type(value).__name__} ({value!r:.60})"
            )


def _report_sections(row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    findings = blank_to_none(row.get("findings"))
    impression = blank_to_none(row.get("impression"))
    report = blank_to_none(row.get("report"))
    if report is None or findings is not None or impression is not None:
        return findings, impression
    # A whole report: split it when it has section headers, else it is all findings.
    parsed_findings, parsed_impression = findings_and_impression(report)
    if parsed_findings is None and parsed_impression is None:
        return " ".join(str(report).split()), None
    return parsed_findings, parsed_impression


def _record(
    row: Mapping[str, Any], line: int, path: Path, label_columns: Sequence[str]
) -> CXRRecord:
    base = path.parent
    _check_text_columns(row, path, line)
    images = row.get("image")
    image_values = list(images) if isinstance(images, list) else [images]
    if not image_values:
        raise DatasetError(path, f"line {line}: column 'image' is an empty list")
    image_paths = [_resolve(base, value, path, line, "image") for value in image_values]
    mask = blank_to_none(row.get("mask"))
    findings, impression = _report_sections(row)
    labels = {c: parse_label_value(row.get(c), path, line, c) for c in label_columns}
    meta = {k: blank_to_none(v) for k, v in row.items() if k not in RESERVED_COLUMNS and k not in label_columns}
    meta.update(
        view=normalise_view(row.get("view")),
        patient_id=blank_to_none(row.get("patient_id")),
        study_id=blank_to_none(row.get("study_id")),
        manifest_line=line,
    )
    return CXRRecord(
        image=image_paths[0],
        extra_images=tuple(image_paths[1:]),
        mask=None if mask is None else _resolve(base, mask, path, line, "mask"),
        labels=labels if label_columns else None,
        findings=findings,
        impression=impression,
        split=normalise_split(row.get("split")),
        meta=meta,
    )


class ManifestDataset(CXRDataset):
    """Images listed in a CSV or JSONL manifest.

    Columns: ``image`` (required; relative to the manifest's folder unless absolute; in JSONL also
    a list of views, the first being the image), optional ``mask``, ``split``, ``findings``,
    ``impression``, ``report`` (a whole report, split at FINDINGS:/IMPRESSION: headers when present,
    else used as findings; ignored when findings or impression are given), ``view``, ``patient_id``,
    ``study_id``. Label columns are ``label_columns`` when given, else every other column whose name
    canonicalises to a finding (``Effusion``, ``pneumonia``, ``No_Finding`` ...); values
    1/0/-1/blank (also true/false, yes/no; anything else is an error). Remaining columns go into
    ``meta``. Formats: ``.csv``, ``.tsv`` (tab-separated), ``.jsonl``, each optionally ``.gz``;
    UTF-8 with or without a byte-order mark. In JSONL, ``findings`` / ``impression`` / ``report`` /
    ``split`` / ``view`` must be strings or null.

    Args:
        path: the manifest file, or a folder holding ``manifest.csv`` / ``manifest.jsonl`` /
            ``manifest.tsv`` (or one of them gzipped).
        label_columns: label columns in order; None = detect them.
        **options: passed to :class:`CXRDataset`.

    Raises:
        DatasetError: missing manifest, missing ``image`` column, or a bad row (naming its line).
    """

    def __init__(self, path: str | Path, *, label_columns: Sequence[str] | None = None, **options: Any):
        path = resolve_manifest(Path(path))
        columns, rows = _read_rows(path)
        if not rows:
            raise DatasetError(path, "manifest has no rows")
        labels = _label_columns(columns, label_columns, path)
        records = [_record(row, line, path, labels) for line, row in rows]
        super().__init__(records, label_names=labels, source=path, **options)
