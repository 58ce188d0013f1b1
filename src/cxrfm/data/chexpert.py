"""CheXpert v1.0 (and the "small" release): ``train.csv`` / ``valid.csv`` with 14 observations."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import blank_to_none, normalise_view, parse_age, parse_label_value, read_csv_rows
from cxrfm.errors import DatasetError

METADATA_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
SPLIT_FILES = {"train.csv": "train", "valid.csv": "val"}

_SPLIT_FOLDERS = ("train", "valid", "test")


def _image_path(root: Path, value: str) -> Path:
    """``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` -> under ``root``.

    Published paths start with the release folder name; ``root`` is that folder (where the CSVs
    are), so the first component is dropped. Paths already starting at ``train/`` are kept.
    """
    parts = PurePosixPath(value.strip()).parts
    if parts and parts[0] not in _SPLIT_FOLDERS:
        parts = parts[1:]
    return root.joinpath(*parts)


def _view(row: dict[str, str]) -> str | None:
    if row["Frontal/Lateral"].strip().lower() == "lateral":
        return "LATERAL"
    return normalise_view(row["AP/PA"])


class CheXpertDataset(CXRDataset):
    """CheXpert, one item per image; ``root`` is the release folder holding ``train.csv`` /
    ``valid.csv`` (columns ``Path,Sex,Age,Frontal/Lateral,AP/PA,<14 observations>``).

    Labels follow the CSV: 1 positive, 0 negative, -1 uncertain (kept: choosing a policy such as
    U-ones / U-zeros is the training code's decision), blank -> NaN. Splits: ``train.csv`` -> train,
    ``valid.csv`` -> val (the hidden test set is not published in this format). ``meta``:
    ``patient_id`` (``patient00001``), ``study_id`` (``patient00001/study1``), ``view`` (PA / AP /
    LATERAL), ``sex``, ``age``.

    Args:
        root: folder with ``train.csv`` and/or ``valid.csv`` and the ``train/``, ``valid/`` images.
        **options: passed to :class:`CXRDataset`.
    """

    def __init__(self, root: str | Path, **options: Any):
        root = Path(root)
        tables = [(root / name, split) for name, split in SPLIT_FILES.items() if (root / name).is_file()]
        if not tables:
            raise DatasetError(root, f"no CheXpert label file ({' / '.join(SPLIT_FILES)}) found")
        label_names: list[str] | None = None
        records = []
        for path, split in tables:
            header, rows = read_csv_rows(path, required=METADATA_COLUMNS)
            names = [c for c in header if c not in METADATA_COLUMNS]
            if label_names is not None and names != label_names:
                raise DatasetError(path, f"label columns {names} differ from the other file's {label_names}")
            label_names = names
            records += [self._record(root, path, line, row, names, split) for line, row in rows]
        super().__init__(records, label_names=label_names, source=root, **options)

    @staticmethod
    def _record(root: Path, path: Path, line: int, row: dict[str, str], names: list[str], split: str) -> CXRRecord:
        image = _image_path(root, row["Path"])
        parts = PurePosixPath(row["Path"].strip()).parts
        if len(parts) < 3:
            raise DatasetError(path, f"line {line}: Path {row['Path']!r} is not .../patient/study/view.jpg")
        patient, study = parts[-3], parts[-2]
        return CXRRecord(
            image=image,
            labels={name: parse_label_value(row[name], path, line, name) for name in names},
            split=split,
            meta={
                "patient_id": patient,
                "study_id": f"{patient}/{study}",
                "view": _view(row),
                "sex": blank_to_none(row["Sex"]),
                "age": parse_age(row["Age"]),
            },
        )
