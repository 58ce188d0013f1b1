"""NIH ChestX-ray14: ``Data_Entry_2017.csv``, official train/val and test lists, ``images*/`` PNGs."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import blank_to_none, hash_split, normalise_view, parse_age, read_csv_rows, read_text_lines
from cxrfm.errors import DatasetError

# The 14 ChestX-ray14 labels in the paper's order, after "No Finding", spelled as in the CSV.
NIH_LABELS: tuple[str, ...] = (
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

ENTRY_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
REQUIRED_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
# The published header "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]" is split by
# its own commas into four CSV columns with these names.
_SIZE_COLUMNS = {"OriginalImage[Width": "original_width", "Height]": "original_height"}
_SPACING_COLUMNS = {"OriginalImagePixelSpacing[x": "pixel_spacing_x", "y]": "pixel_spacing_y"}


def _entry_file(root: Path) -> Path:
    for name in ENTRY_FILES:
        if (root / name).is_file():
            return root / name
    raise DatasetError(root / ENTRY_FILES[0], "file not found (also looked for Data_Entry_2017_v2020.csv)")


def _index_images(root: Path) -> dict[str, Path]:
    """File name -> path for every PNG under ``root/images*/`` (``images/`` or ``images_001/images/``)."""
    found: dict[str, Path] = {}
    for folder in sorted(p for p in root.glob("images*") if p.is_dir()):
        for directory, _, files in os.walk(folder):
            for name in files:
                if name.lower().endswith(".png"):
                    found.setdefault(name, Path(directory) / name)
    return found


def _read_list(path: Path) -> set[str]:
    """The file names in a split list; a missing list is empty, an unreadable one a DatasetError."""
    if not path.is_file():
        return set()
    return {line.strip() for line in read_text_lines(path) if line.strip()}


def _number(value: str | None) -> float | None:
    """A finite number, or None for blank / unparseable / infinite / NaN cells."""
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


class NIHChestXray14Dataset(CXRDataset):
    """ChestX-ray14 (112,120 frontal images, 30,805 patients), one item per image.

    ``root`` holds ``Data_Entry_2017.csv`` (or ``_v2020``; header ``Image Index,Finding Labels,
    Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],
    OriginalImagePixelSpacing[x,y]``), ``train_val_list.txt`` / ``test_list.txt`` and the images in
    ``images*/`` (any depth, e.g. ``images_001/images/00000001_000.png``).

    Labels: :data:`NIH_LABELS` from the ``|``-separated ``Finding Labels``; every image is fully
    labelled (1 listed, 0 otherwise). Splits: ``test_list.txt`` -> test, ``train_val_list.txt`` ->
    train, except a patient-level ``val_fraction`` of it (hashed on Patient ID, deterministic) ->
    val; images in neither list have split None. ``meta``: ``patient_id``, ``follow_up``, ``age``,
    ``sex``, ``view`` (PA / AP), original size and pixel spacing.

    Args:
        root: the ChestX-ray14 folder.
        val_fraction: share of train_val patients moved to a ``val`` split (0 = none, as published).
        **options: passed to :class:`CXRDataset`.
    """

    def __init__(self, root: str | Path, *, val_fraction: float = 0.0, **options: Any):
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        root = Path(root)
        entries = _entry_file(root)
        _, rows = read_csv_rows(entries, required=REQUIRED_COLUMNS)
        images = _index_images(root)
        train_val, test = _read_list(root / "train_val_list.txt"), _read_list(root / "test_list.txt")
        records = []
        for line, row in rows:
            name = row["Image Index"].strip()
            if not name:
                raise DatasetError(entries, f"line {line}: column 'Image Index' is empty")
            split = "test" if name in test else "train" if name in train_val else None
            if split == "train" and val_fraction > 0:
                split = hash_split(row["Patient ID"].strip(), (1 - val_fraction, val_fraction, 0.0), salt="nih-")
            records.append(
                CXRRecord(
                    image=images.get(name, root / "images" / name),
                    labels=self._labels(row["Finding Labels"], entries, line),
                    split=split,
                    meta=self._meta(row),
                )
            )
        super().__init__(records, label_names=NIH_LABELS, source=entries, **options)

    @staticmethod
    def _labels(value: str, path: Path, line: int) -> dict[str, float]:
        present = {name.strip() for name in value.split("|") if name.strip()}
        unknown = sorted(present - set(NIH_LABELS))
        if unknown:
            raise DatasetError(path, f"line {line}: unknown finding label(s) {unknown}")
        return {name: float(name in present) for name in NIH_LABELS}

    @staticmethod
    def _meta(row: dict[str, str]) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "patient_id": row["Patient ID"].strip(),
            "study_id": row["Image Index"].strip().rsplit(".", 1)[0],
            "follow_up": int(_number(row["Follow-up #"]) or 0),
            "age": parse_age(row["Patient Age"]),
            "sex": blank_to_none(row["Patient Gender"]),
            "view": normalise_view(row["View Position"]),
        }
        for theirs, ours in {**_SIZE_COLUMNS, **_SPACING_COLUMNS}.items():
            if theirs in row:
                meta[ours] = _number(row[theirs])
        return meta
