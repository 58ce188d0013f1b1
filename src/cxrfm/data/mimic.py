"""MIMIC-CXR-JPG v2: split / CheXpert-label / metadata CSVs, JPEG images, free-text reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import find_table, iter_csv_rows, normalise_split, normalise_view, parse_label_value

SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
LABEL_FILES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv", "negbio": "mimic-cxr-2.0.0-negbio.csv"}

_IDS = ("subject_id", "study_id")
# metadata.csv columns kept in meta (under these names); the rest would only cost memory at 377k rows.
_METADATA_META = {
    "Rows": "rows",
    "Columns": "columns",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "PerformedProcedureStepDescription": "procedure",
}


def study_folder(subject_id: str, study_id: str) -> str:
    """``files/p10/p10000032/s50414267``: MIMIC groups patients by the first two id digits.

    A string, not a Path: joining Path objects for 377k images takes longer than reading the CSVs.
    """
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


def _read_labels(path: Path) -> tuple[list[str], dict[tuple[str, str], dict[str, float]]]:
    header, rows = iter_csv_rows(path, required=_IDS)
    names = [c for c in header if c not in _IDS]
    by_study = {
        (row["subject_id"], row["study_id"]): {c: parse_label_value(row[c], path, line, c) for c in names}
        for line, row in rows
    }
    return names, by_study


def _read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    _, rows = iter_csv_rows(path, required=("dicom_id", "ViewPosition"))
    return {
        row["dicom_id"]: {
            "view": normalise_view(row["ViewPosition"]),
            **{ours: row.get(theirs) or None for theirs, ours in _METADATA_META.items()},
        }
        for _, row in rows
    }


class MIMICCXRDataset(CXRDataset):
    """MIMIC-CXR-JPG, one item per image (``dicom_id``).

    Layout under ``root`` (each CSV may also be ``.csv.gz``):
    ``mimic-cxr-2.0.0-split.csv`` (``dicom_id,study_id,subject_id,split``; required),
    ``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id,subject_id,study_id,...,ViewPosition,Rows,Columns,
    StudyDate,StudyTime,...``; optional, gives ``meta["view"]``),
    ``mimic-cxr-2.0.0-chexpert.csv`` / ``-negbio.csv`` (``subject_id,study_id,<14 observations>``;
    values 1.0 / 0.0 / -1.0 uncertain / blank -> NaN; studies absent from the file are all NaN),
    images ``files/p10/p10000032/s50414267/<dicom_id>.jpg``.

    Reports: ``<reports_root>/files/p10/p10000032/s50414267.txt`` (default ``root/mimic-cxr-reports``
    when it exists), parsed into FINDINGS / IMPRESSION when an item is loaded; sections a report
    lacks are None. Split ``validate`` is called ``val`` here. ``meta``: ``patient_id``
    (subject_id), ``study_id``, ``dicom_id``, ``view``, ``rows``, ``columns``, ``study_date``,
    ``study_time``, ``procedure``.

    Args:
        root: the MIMIC-CXR-JPG folder.
        reports_root: folder holding ``files/p*/p*/s*.txt`` reports, or None.
        label_source: ``"chexpert"``, ``"negbio"`` or None (no labels).
        **options: passed to :class:`CXRDataset` (``views=("PA", "AP")`` keeps frontal images).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        reports_root: str | Path | None = None,
        label_source: str | None = "chexpert",
        **options: Any,
    ):
        if label_source is not None and label_source not in LABEL_FILES:
            raise ValueError(f"label_source must be one of {sorted(LABEL_FILES)} or None, got {label_source!r}")
        root = Path(root)
        split_path = find_table(root, SPLIT_FILE)
        _, split_rows = iter_csv_rows(split_path, required=("dicom_id", *_IDS, "split"))
        label_names, labels = [], {}
        if label_source is not None:
            label_names, labels = _read_labels(find_table(root, LABEL_FILES[label_source]))
        metadata = self._optional_metadata(root)
        if reports_root is None and (root / "mimic-cxr-reports").is_dir():
            reports_root = root / "mimic-cxr-reports"
        reports_root = None if reports_root is None else Path(reports_root)
        records = []
        for _, row in split_rows:
            subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
            folder = study_folder(subject, study)
            records.append(
                CXRRecord(
                    image=Path(f"{root}/{folder}/{dicom}.jpg"),
                    labels=labels.get((subject, study)),
                    split=normalise_split(row["split"]),
                    report_file=None if reports_root is None else Path(f"{reports_root}/{folder}.txt"),
                    meta={
                        "patient_id": subject,
                        "study_id": study,
                        "dicom_id": dicom,
                        **metadata.get(dicom, {"view": None}),
                    },
                )
            )
        super().__init__(records, label_names=label_names, source=split_path, **options)

    @staticmethod
    def _optional_metadata(root: Path) -> dict[str, dict[str, Any]]:
        for name in (METADATA_FILE, f"{METADATA_FILE}.gz"):
            if (root / name).is_file():
                return _read_metadata(root / name)
        return {}
