"""Dataset kinds by name, so configs and CLIs can say ``dataset: covid`` instead of importing classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrfm.data.chexpert import CheXpertDataset
from cxrfm.data.covid import CovidChestXrayDataset
from cxrfm.data.dataset import CXRDataset
from cxrfm.data.folder import ImageFolderDataset
from cxrfm.data.iu_xray import IUXrayDataset
from cxrfm.data.manifest import ManifestDataset
from cxrfm.data.mimic import MIMICCXRDataset
from cxrfm.data.nih import NIHChestXray14Dataset
from cxrfm.data.openist import OpenISTLungDataset
from cxrfm.data.rsna import RSNAPneumoniaDataset

DATASETS: dict[str, Callable[..., CXRDataset]] = {
    "folder": ImageFolderDataset,
    "manifest": ManifestDataset,
    "openist": OpenISTLungDataset,
    "covid": CovidChestXrayDataset,
    "iu-xray": IUXrayDataset,
    "mimic": MIMICCXRDataset,
    "chexpert": CheXpertDataset,
    "nih": NIHChestXray14Dataset,
    "rsna": RSNAPneumoniaDataset,
}


def build_dataset(
    kind: str,
    root: str | Path,
    split: str | Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    **options: Any,
) -> CXRDataset:
    """Build the adapter registered as ``kind`` (one of :data:`DATASETS`).

    Args:
        kind: ``folder``, ``manifest``, ``openist``, ``covid``, ``iu-xray``, ``mimic``,
            ``chexpert``, ``nih`` or ``rsna`` (``_`` and case are ignored: ``IU_Xray`` works).
        root: the dataset folder (for ``manifest``: the manifest file or its folder).
        split: split(s) to keep, or None for all.
        image_size: ``(H, W)`` to resize to, or None for native sizes.
        **options: adapter options (``mask_root``, ``mask_source``, ``image_root``, ...) and
            :class:`CXRDataset` options (``skip_unreadable``, ``resize_mode``, ``transform``, ...).

    Raises:
        ValueError: unknown ``kind`` (the message lists the known ones).
    """
    key = kind.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {', '.join(DATASETS)}")
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    return DATASETS[key](Path(root), split=split, image_size=size, **options)
