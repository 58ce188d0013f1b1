"""ieee8023 COVID-19 image data collection (June 2020 snapshot, shared set): 575 X-rays with
multi-labels, clinical notes and two sets of lung masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import blank_to_none, normalise_split, normalise_view, parse_age, read_csv_rows
from cxrfm.errors import DatasetError

# The fine labels of the shared snapshot, most frequent first (README counts). Labels a future
# manifest adds are appended in sorted order so the label space never depends on the split chosen.
FINE_LABELS: tuple[str, ...] = (
    "COVID-19",
    "No Finding",
    "ARDS",
    "SARS",
    "Pneumocystis",
    "Pneumonia",
    "Streptococcus",
    "Klebsiella",
    "Mycoplasma Bacterial Pneumonia",
    "Legionella",
    "Lipoid",
    "Varicella",
    "E.Coli",
    "Bacterial",
    "Influenza",
)

# label_coarse values -> label names (canonical where our vocabulary has them).
COARSE_LABELS: dict[str, str] = {"covid19": "COVID-19", "other_pneumonia": "Other Pneumonia", "no_finding": "No Finding"}

MASK_SOURCES = ("v7labs", "lungvae", "any")

_REQUIRED = ("image", "split", "patientid", "labels", "label_coarse", "view", "mask_v7labs", "mask_lungvae")
_CONSUMED = ("image", "split", "patientid", "labels", "view", "mask_v7labs", "mask_lungvae", "age")


def _fine_labels(row: dict[str, str]) -> list[str]:
    return [name.strip() for name in row["labels"].split("|") if name.strip()]


def _choose_mask(row: dict[str, str], mask_source: str | None) -> tuple[str | None, str | None]:
    """``(relative mask path, source name)`` for the requested source, or ``(None, None)``."""
    if mask_source is None:
        return None, None
    order = ("v7labs", "lungvae") if mask_source == "any" else (mask_source,)
    for source in order:
        value = blank_to_none(row[f"mask_{source}"])
        if value is not None:
            return value, source
    return None, None


class CovidChestXrayDataset(CXRDataset):
    """``covid_chestxray/``: ``manifest.csv`` + ``images/*.jpg`` + ``masks_v7labs/`` + ``masks_lungvae/``.

    Patient-level splits train/val/test = 404/104/67.

    Labels:
        ``label_set="fine"`` (default): multi-hot over :data:`FINE_LABELS` from the ``labels`` column
        (``|``-separated, e.g. ``ARDS|COVID-19``); every row is fully labelled (0 = not listed).
        ``label_set="coarse"``: one-hot over COVID-19 / Other Pneumonia / No Finding from
        ``label_coarse``. Both raw columns are also in ``meta`` (``finding``, ``label_coarse``).

    Masks (``mask_source``): ``"v7labs"`` (human-reviewed, 427, include the retro-cardiac region),
    ``"lungvae"`` (model-predicted, 192), ``"any"`` (V7 where present, else lungVAE) or None.
    ``meta["mask_source"]`` says which was used. ``require_mask=True`` keeps only rows with one.

    Text: ``clinical_notes`` are case descriptions from publications, not radiology reports, so they
    go into ``meta["clinical_notes"]`` and ``findings`` stays None - unless ``notes_as_findings=True``,
    which makes them the findings (the only image+text pairs in the shared data, for smoke tests).

    ``meta``: ``patient_id``, ``view`` (PA / AP / AP SUPINE / LATERAL), ``age`` (int or None) and
    every other manifest column (``sex``, ``finding``, ``survival``, ``license``, ``doi``, ...).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        mask_source: str | None = "v7labs",
        require_mask: bool = False,
        label_set: str = "fine",
        notes_as_findings: bool = False,
        **options: Any,
    ):
        if mask_source is not None and mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES} or None, got {mask_source!r}")
        if label_set not in ("fine", "coarse"):
            raise ValueError(f"label_set must be 'fine' or 'coarse', got {label_set!r}")
        root = Path(root)
        manifest = root / "manifest.csv"
        _, rows = read_csv_rows(manifest, required=_REQUIRED)
        if label_set == "fine":
            seen = {name for _, row in rows for name in _fine_labels(row)}
            label_names = FINE_LABELS + tuple(sorted(seen - set(FINE_LABELS)))
        else:
            label_names = tuple(COARSE_LABELS.values())
        records = []
        for line, row in rows:
            record = self._record(root, manifest, line, row, mask_source, label_set, label_names, notes_as_findings)
            if record.mask is not None or not require_mask:
                records.append(record)
        super().__init__(records, label_names=label_names, source=manifest, **options)

    @staticmethod
    def _record(
        root: Path,
        manifest: Path,
        line: int,
        row: dict[str, str],
        mask_source: str | None,
        label_set: str,
        label_names: tuple[str, ...],
        notes_as_findings: bool,
    ) -> CXRRecord:
        if not row["image"].strip():
            raise DatasetError(manifest, f"line {line}: column 'image' is empty")
        if label_set == "fine":
            present = set(_fine_labels(row))
        else:
            coarse = COARSE_LABELS.get(row["label_coarse"].strip())
            if coarse is None:
                raise DatasetError(
                    manifest, f"line {line}: label_coarse {row['label_coarse']!r} not in {sorted(COARSE_LABELS)}"
                )
            present = {coarse}
        mask, used_source = _choose_mask(row, mask_source)
        meta = {k: blank_to_none(v) for k, v in row.items() if k not in _CONSUMED}
        meta.update(
            patient_id=blank_to_none(row["patientid"]),
            study_id=Path(row["image"]).stem,
            view=normalise_view(row["view"]),
            age=parse_age(row.get("age")),
            mask_source=used_source,
            manifest_line=line,
        )
        notes = blank_to_none(row.get("clinical_notes"))
        return CXRRecord(
            image=root / row["image"],
            mask=None if mask is None else root / mask,
            # Each row's finding list is complete: a label not listed is a negative, not unknown.
            labels={name: float(name in present) for name in label_names},
            findings=notes if notes_as_findings else None,
            split=normalise_split(row["split"]),
            meta=meta,
        )

