"""OpenIST "Chest X-RAY": 275 normal PA radiographs with manual lung-field masks (shared set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import blank_to_none, normalise_split, read_csv_rows
from cxrfm.errors import DatasetError

_COLUMNS = ("image", "mask", "split")


class OpenISTLungDataset(CXRDataset):
    """``lung_seg_openist/``: ``manifest.csv`` (``image, mask, split, width, height, lung_fraction,
    orig_image, orig_mask``), JPEG images and 1-bit PNG masks (heart/mediastinum excluded).

    Splits train/val/test = 229/23/23. No labels (all studies are normal); ``meta["view"]`` is PA.

    Args:
        root: the ``lung_seg_openist`` folder.
        **options: passed to :class:`CXRDataset`.
    """

    def __init__(self, root: str | Path, **options: Any):
        root = Path(root)
        manifest = root / "manifest.csv"
        _, rows = read_csv_rows(manifest, required=_COLUMNS)
        records = []
        for line, row in rows:
            empty = [column for column in ("image", "mask") if not row[column].strip()]
            if empty:
                raise DatasetError(manifest, f"line {line}: column(s) {empty} empty")
            meta = {k: blank_to_none(v) for k, v in row.items() if k not in _COLUMNS}
            meta.update(view="PA", study_id=Path(row["image"]).stem, manifest_line=line)
            records.append(
                CXRRecord(image=root / row["image"], mask=root / row["mask"], split=normalise_split(row["split"]), meta=meta)
            )
        super().__init__(records, source=manifest, **options)
