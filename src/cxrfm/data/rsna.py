"""RSNA Pneumonia Detection Challenge (stage 2): box CSV, class CSV, DICOM images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.sample import CXRSample
from cxrfm.data.tables import hash_split, parse_number, read_csv_rows
from cxrfm.errors import DatasetError
from cxrfm.io.image import fit_geometry

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGE_FOLDER = "stage_2_train_images"

# In RSNA "Lung Opacity" is the class of every Target=1 image: the challenge's pneumonia label.
RSNA_LABELS: tuple[str, ...] = ("Pneumonia", "Lung Opacity")

# 25,184 / 1,500 / 3,000 of 29,684 images: the split sizes the HD-MAE reference code reports.
DEFAULT_SPLIT_FRACTIONS = (25184 / 29684, 1500 / 29684, 3000 / 29684)


def _box(row: dict[str, str], path: Path, line: int) -> list[float]:
    values = [parse_number(row[c], path, line, c) for c in ("x", "y", "width", "height")]
    if any(v != v for v in values):  # NaN: a positive row without a box
        raise DatasetError(path, f"line {line}: Target is 1 but the box (x, y, width, height) is incomplete")
    return values


def _read_boxes(path: Path) -> dict[str, tuple[float, list[list[float]]]]:
    """``{patientId: (target, [[x, y, width, height], ...])}`` in file order."""
    _, rows = read_csv_rows(path, required=("patientId", "x", "y", "width", "height", "Target"))
    patients: dict[str, tuple[float, list[list[float]]]] = {}
    for line, row in rows:
        patient = row["patientId"].strip()
        if not patient:
            raise DatasetError(path, f"line {line}: column 'patientId' is empty")
        target = parse_number(row["Target"], path, line, "Target")
        if target not in (0.0, 1.0):
            raise DatasetError(path, f"line {line}: Target must be 0 or 1, got {row['Target']!r}")
        known_target, boxes = patients.setdefault(patient, (target, []))
        if known_target != target:
            raise DatasetError(path, f"line {line}: patient {patient} has both Target 0 and 1")
        if target == 1.0:
            boxes.append(_box(row, path, line))
    return patients


def _read_classes(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    _, rows = read_csv_rows(path, required=("patientId", "class"))
    return {row["patientId"].strip(): row["class"].strip() for _, row in rows}


def resize_boxes(
    boxes: Sequence[Sequence[float]], in_size: tuple[int, int], out_size: tuple[int, int], mode: str
) -> list[list[float]]:
    """``[x, y, width, height]`` boxes in ``in_size`` pixels -> the same boxes after resizing the image."""
    if mode == "stretch":
        scale_y, scale_x = out_size[0] / in_size[0], out_size[1] / in_size[1]
        top = left = 0
    else:
        _, (top, left), (new_height, new_width) = fit_geometry(in_size, out_size)
        scale_y, scale_x = new_height / in_size[0], new_width / in_size[1]
    return [[left + x * scale_x, top + y * scale_y, w * scale_x, h * scale_y] for x, y, w, h in boxes]


class RSNAPneumoniaDataset(CXRDataset):
    """RSNA Pneumonia (26,684 stage-2 training images with labels), one item per patient/image.

    ``root`` holds ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``; one row per
    box, Target 0 rows without a box), optionally ``stage_2_detailed_class_info.csv``
    (``patientId,class``: Lung Opacity / No Lung Opacity / Not Normal / Normal) and
    ``stage_2_train_images/<patientId>.dcm``.

    Labels: ``Pneumonia`` and ``Lung Opacity``, both equal to Target. ``meta``: ``patient_id``,
    ``boxes`` (``[[x, y, width, height], ...]`` in original pixels), ``class``, and with an
    ``image_size`` also ``boxes_resized`` (the boxes on the resized image). No split is published:
    a deterministic patient hash assigns train/val/test with ``split_fractions`` (default the
    25,184 / 1,500 / 3,000 proportions of the HD-MAE reference).

    Args:
        root: the RSNA challenge folder.
        split_fractions: ``(train, val, test)`` shares summing to 1.
        **options: passed to :class:`CXRDataset`.
    """

    def __init__(
        self, root: str | Path, *, split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, **options: Any
    ):
        root = Path(root)
        labels_path = root / LABELS_FILE
        boxes = _read_boxes(labels_path)
        classes = _read_classes(root / CLASS_FILE)
        records = [
            CXRRecord(
                image=root / IMAGE_FOLDER / f"{patient}.dcm",
                labels={name: target for name in RSNA_LABELS},
                split=hash_split(patient, tuple(split_fractions), salt="rsna-"),
                meta={"patient_id": patient, "study_id": patient, "boxes": patient_boxes, "class": classes.get(patient)},
            )
            for patient, (target, patient_boxes) in boxes.items()
        ]
        super().__init__(records, label_names=RSNA_LABELS, source=labels_path, **options)

    def annotate(self, sample: CXRSample) -> CXRSample:
        original_size = sample.meta.get("original_size")
        if self.image_size is not None and original_size is not None:
            sample.meta["boxes_resized"] = resize_boxes(
                sample.meta["boxes"], tuple(original_size), self.image_size, self.resize_mode
            )
        return sample
