"""IU-Xray (Open-i NLMCXR) in the R2Gen layout: ``annotation.json`` + ``images/<id>/<k>.png``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import blank_to_none, normalise_split, read_json, read_jsonl_rows
from cxrfm.errors import DatasetError

# manifest.jsonl fields (shared set) copied into meta when present.
_MANIFEST_META = ("uid", "indication", "comparison", "mesh_major", "mesh_automatic", "r2gen_image_ids")


def _read_annotation(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(split_key, entry), ...]`` from an R2Gen ``annotation.json``, checked entry by entry."""
    annotation = read_json(path)
    if not isinstance(annotation, dict) or not annotation:
        raise DatasetError(path, "expected an object of splits {'train': [...], 'val': [...], 'test': [...]}")
    entries = []
    for split_key, items in annotation.items():
        if not isinstance(items, list):
            raise DatasetError(path, f"split '{split_key}' is not a list")
        for position, entry in enumerate(items):
            where = f"{split_key}[{position}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise DatasetError(path, f"{where}: entry has no string 'id'")
            paths = entry.get("image_path")
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
                raise DatasetError(path, f"{where} ({entry['id']}): 'image_path' must be a non-empty list of paths")
            report = entry.get("report")
            if report is not None and not isinstance(report, str):
                raise DatasetError(
                    path, f"{where} ({entry['id']}): field 'report' must be a string, got {type(report).__name__}"
                )
            entries.append((split_key, entry))
    return entries


def _read_manifest(path: Path) -> dict[str, Mapping[str, Any]]:
    """The shared set's ``manifest.jsonl`` keyed by R2Gen id (studies without one are skipped)."""
    if not path.is_file():
        return {}
    rows = {}
    for line, row in read_jsonl_rows(path):
        key = row.get("r2gen_id")
        if not key:
            continue
        if not isinstance(key, str):
            raise DatasetError(path, f"line {line}: field 'r2gen_id' must be a string, got {type(key).__name__}")
        impression = row.get("impression")
        if impression is not None and not isinstance(impression, str):
            raise DatasetError(
                path, f"line {line}: field 'impression' must be a string, got {type(impression).__name__}"
            )
        rows[key] = row
    return rows


def _views(paths: list[str], image_root: Path | None, views_per_study: int) -> list[Path | None]:
    """The first ``views_per_study`` image paths; a study with fewer repeats its last view."""
    chosen = paths[:views_per_study]
    chosen += [chosen[-1]] * (views_per_study - len(chosen))
    return [None if image_root is None else image_root / p for p in chosen]


class IUXrayDataset(CXRDataset):
    """IU-Xray with the R2Gen split (2,069 / 296 / 590 studies), one item per study.

    ``findings`` is the R2Gen ``report`` (the XML FINDINGS section). When ``root`` also holds the
    shared set's ``manifest.jsonl``, ``impression``, ``indication``, MeSH terms and Open-i ids are
    added (``meta``); otherwise impression is None.

    Images: ``<image_root>/<id>/0.png``, ``1.png`` (R2Gen layout; default ``root/images`` when that
    folder exists). The item's ``image`` is view 0; with ``views_per_study=2`` (what R2Gen-style
    report generation uses) view 1 is loaded into ``meta["extra_images"]`` (a list of ``(1, H, W)``
    tensors; a study with fewer views repeats its last). Which Open-i image became 0 or 1 is not
    recorded by R2Gen, so ``meta["view"]`` is None.

    Without images (the shared set has none) pass ``images_required=False``: items then carry
    all-zero placeholder images and ``meta["has_image"] = False``, and the text/splits are usable.
    With ``images_required=True`` a missing file raises :class:`ImageReadError` naming it on
    access (or is skipped with ``skip_unreadable=True``); :meth:`missing_images` lists them.

    Args:
        root: folder with ``annotation.json`` (and optionally ``manifest.jsonl``, ``images/``).
        image_root: folder of ``<id>/<k>.png`` images, or None.
        views_per_study: number of views loaded per study (1 or more).
        **options: passed to :class:`CXRDataset` (``images_required``, ``split``, ...).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_root: str | Path | None = None,
        views_per_study: int = 1,
        **options: Any,
    ):
        if views_per_study < 1:
            raise ValueError(f"views_per_study must be >= 1, got {views_per_study}")
        root = Path(root)
        annotation_path = root / "annotation.json"
        entries = _read_annotation(annotation_path)
        manifest = _read_manifest(root / "manifest.jsonl")
        image_root = self._image_root(root, image_root, options.get("images_required", True))
        records = [
            self._record(split_key, entry, manifest.get(entry["id"], {}), image_root, views_per_study)
            for split_key, entry in entries
        ]
        super().__init__(records, source=annotation_path, **options)
        self.image_root = image_root

    @staticmethod
    def _image_root(root: Path, image_root: str | Path | None, images_required: bool) -> Path | None:
        if image_root is not None:
            image_root = Path(image_root)
            if not image_root.is_dir():
                raise DatasetError(image_root, "IU-Xray image folder not found")
            return image_root
        if (root / "images").is_dir():
            return root / "images"
        if images_required:
            raise DatasetError(
                root,
                "no IU-Xray images: pass image_root=<folder with <id>/0.png> or images_required=False "
                "to use the reports and splits without pixels",
            )
        return None

    @staticmethod
    def _record(
        split_key: str,
        entry: Mapping[str, Any],
        manifest_row: Mapping[str, Any],
        image_root: Path | None,
        views_per_study: int,
    ) -> CXRRecord:
        views = _views(entry["image_path"], image_root, views_per_study)
        meta = {key: manifest_row[key] for key in _MANIFEST_META if key in manifest_row}
        meta.update(
            study_id=entry["id"],
            patient_id=None,
            view=None,
            image_paths=list(entry["image_path"]),
        )
        return CXRRecord(
            image=views[0],
            extra_images=tuple(views[1:]),
            findings=blank_to_none(entry.get("report")),
            impression=blank_to_none(manifest_row.get("impression")),
            split=normalise_split(split_key),
            meta=meta,
        )


def read_r2gen_reports(annotation_path: str | Path, split: str = "train") -> list[str]:
    """The ``report`` strings of one split of an R2Gen ``annotation.json`` (e.g. IU-Xray's 2,069 train)."""
    path = Path(annotation_path)
    try:
        annotation = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(path, "annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetError(path, f"not valid JSON: {exc}") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read the annotation file ({exc.strerror or exc})") from None
    if not isinstance(annotation, dict) or split not in annotation:
        known = sorted(annotation) if isinstance(annotation, dict) else "?"
        raise DatasetError(path, f"no split {split!r} (has {known})")
    entries = annotation[split]
    if not isinstance(entries, list):
        raise DatasetError(path, f"split {split!r} is not a list")
    reports = []
    for position, entry in enumerate(entries):
        report = entry.get("report") if isinstance(entry, dict) else None
        if not isinstance(report, str):
            got = "no entry object" if not isinstance(entry, dict) else type(report).__name__
            raise DatasetError(path, f"{split}[{position}]: field 'report' must be a string ({got})")
        reports.append(report)
    return reports
