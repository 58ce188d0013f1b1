"""Every image under a folder, with optional lung masks matched by file stem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrfm.data.dataset import CXRDataset, CXRRecord
from cxrfm.data.tables import normalise_split
from cxrfm.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")

_SPLIT_FOLDERS = {"train", "val", "test"}


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, case-insensitive suffix), sorted for a stable order."""
    return sorted(
        path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def _split_of(path: Path, root: Path) -> str | None:
    """``root/train/...`` -> ``"train"`` (also ``valid``/``validation``); other layouts -> None."""
    parts = path.relative_to(root).parts
    if len(parts) < 2:
        return None
    split = normalise_split(parts[0])
    return split if split in _SPLIT_FOLDERS else None


def _masks_by_stem(mask_root: Path) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for path in list_images(mask_root):
        if path.stem in masks:
            raise DatasetError(mask_root, f"two masks share the stem '{path.stem}': {masks[path.stem]} and {path}")
        masks[path.stem] = path
    return masks


class ImageFolderDataset(CXRDataset):
    """All images under ``root`` (png/jpg/jpeg/tif/tiff/dcm/dicom, recursive, sorted by path).

    A first-level folder named ``train``/``val``/``valid``/``validation``/``test`` sets the split.
    Masks in ``mask_root`` (recursive) are matched to images by file stem; images without a mask
    get ``lung_mask=None``. A ``mask_root`` inside ``root`` is excluded from the images.

    Args:
        root: folder of images.
        mask_root: folder of lung masks, or None.
        **options: passed to :class:`CXRDataset` (``split``, ``image_size``, ``skip_unreadable``, ...).
    """

    def __init__(self, root: str | Path, *, mask_root: str | Path | None = None, **options: Any):
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(root, "image folder not found")
        mask_root = None if mask_root is None else Path(mask_root)
        if mask_root is not None and not mask_root.is_dir():
            raise DatasetError(mask_root, "mask folder not found")
        masks = _masks_by_stem(mask_root) if mask_root is not None else {}
        images = [
            path
            for path in list_images(root)
            if mask_root is None or not path.resolve().is_relative_to(mask_root.resolve())
        ]
        if not images:
            raise DatasetError(root, f"no image files ({', '.join(IMAGE_SUFFIXES)}) found")
        records = [
            CXRRecord(
                image=path,
                mask=masks.get(path.stem),
                split=_split_of(path, root),
                meta={"study_id": path.stem},
            )
            for path in images
        ]
        super().__init__(records, source=root, **options)
