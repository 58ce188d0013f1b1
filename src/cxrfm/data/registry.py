"""The one dataset dispatcher: a :class:`DatasetSpec` from a run config -> a dataset of :class:`CXRSample`.

Every recipe's ``data:`` section (and each named source of pretraining's ``data.sources``) has the
same shape::

    data:
      kind: covid                       # phantom, shards, or an adapter of ADAPTERS
      root: ../shared/data/covid_chestxray
      splits: {val: val, test: null}    # role -> the dataset's own split name (null: skip / all)
      num_samples: {train: 320, val: 96, test: 96}   # phantom only: items per split (or one int)
      seed: 0                           # phantom only: item 0 of the train split
      max_samples: null                 # keep the first N items of each split (int or per split)
      cache: true                       # keep decoded samples in memory (num_workers: 0)
      options: {label_set: coarse}      # passed to the adapter

:func:`build_dataset` serves every kind, the phantom and shard streams included, so no recipe keeps
its own. Adapters (one per public layout) are looked up by name in :data:`ADAPTERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset

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
from cxrfm.errors import ConfigError, DatasetError

ADAPTERS: dict[str, Callable[..., CXRDataset]] = {
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
GENERATED_KINDS = ("phantom", "shards")  # kinds that are not a folder adapter
KINDS = (*GENERATED_KINDS, *ADAPTERS)


@dataclass
class DatasetSpec:
    """One dataset of a run config (module docstring). Roles are ``train`` / ``val`` / ``test``.

    ``splits`` maps a role to the dataset's split name when they differ; a role mapped to null
    reads every split for ``train`` (pretraining on a whole set) and is skipped for ``val`` /
    ``test`` (see :meth:`has_split`). ``num_samples`` and ``max_samples`` are one int or a
    mapping per role.
    """

    kind: str = "phantom"
    root: str | None = None
    splits: dict[str, str | None] = field(default_factory=dict)
    num_samples: int | dict[str, int] = 256
    seed: int = 0
    max_samples: int | dict[str, int] | None = None
    cache: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.kind = canonical_kind(self.kind)
        except ConfigError as exc:  # a ValueError, so the config loader names the section it is in
            raise ValueError(f"kind: {exc.reason}") from None
        for name in ("num_samples", "max_samples"):
            value = getattr(self, name)
            counts = value.items() if isinstance(value, Mapping) else [("", value)]
            for role, count in counts:
                if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                    where = f"{name}.{role}" if role else name
                    raise ValueError(f"{where} must be an integer >= 1, got {count!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def split_name(self, role: str | None) -> str | None:
        """The dataset's own name of ``role`` (``splits`` may rename it)."""
        return self.splits.get(role, role) if role is not None else None

    def has_split(self, role: str) -> bool:
        """False when ``splits`` maps ``role`` to null (no such split in this run)."""
        return self.split_name(role) is not None

    def count(self, role: str | None) -> int:
        """Phantom items of ``role``."""
        if isinstance(self.num_samples, Mapping):
            if role not in self.num_samples:
                raise ConfigError("data.num_samples", f"no phantom count for split {role!r} (have {sorted(self.num_samples)})")
            return int(self.num_samples[role])
        return int(self.num_samples)

    def cap(self, role: str | None) -> int | None:
        if isinstance(self.max_samples, Mapping):
            return self.max_samples.get(role)
        return self.max_samples


def canonical_kind(kind: str) -> str:
    """``IU_Xray`` -> ``iu-xray``; unknown kinds are a :class:`ConfigError` listing the known ones."""
    key = str(kind).strip().lower().replace("_", "-")
    if key not in KINDS:
        raise ConfigError("data.kind", f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    return key


def build_dataset(
    spec: DatasetSpec | Mapping[str, Any],
    split: str | Sequence[str] | None = "train",
    image_size: tuple[int, int] | None = None,
    *,
    field_name: str = "data",
) -> Dataset:
    """The dataset of ``spec`` for one split role, at ``image_size`` (None: native sizes).

    ``split``: a role (``train`` / ``val`` / ``test``, renamed by ``spec.splits``), a list of the
    dataset's split names, or None for every split. ``field_name`` names the config section in
    errors (``data.sources.openist``). Phantoms of different roles come from disjoint seed ranges.
    """
    from cxrfm.config import from_dict

    if isinstance(spec, Mapping):
        spec = from_dict(DatasetSpec, dict(spec), prefix=field_name)
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    role = split if isinstance(split, str) else None
    dataset = _build_raw(spec, role, split, size, field_name)
    limit = spec.cap(role)
    if limit is not None and limit < len(dataset):
        dataset = first_items(dataset, limit)
    if spec.cache:
        if isinstance(dataset, IterableDataset):
            raise ConfigError(f"{field_name}.cache", "shard streams cannot be cached")
        dataset = CachedDataset(dataset)
    return dataset


def _build_raw(spec: DatasetSpec, role: str | None, split, size, field_name: str) -> Dataset:
    if spec.kind == "phantom":
        from cxrfm.data.phantom import SPLIT_SEED_OFFSETS, PhantomDataset

        seed = spec.seed + SPLIT_SEED_OFFSETS.get(role or "train", 0)
        try:
            return PhantomDataset(spec.count(role), size or (256, 256), seed=seed, split=role or "train", **spec.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{field_name}.options", str(exc)) from None
    if spec.root is None:
        raise ConfigError(f"{field_name}.root", f"dataset kind {spec.kind!r} needs a root")
    if spec.kind == "shards":
        from cxrfm.data.shards import ShardDataset

        try:
            return ShardDataset(spec.root, **spec.options)
        except TypeError as exc:
            raise ConfigError(f"{field_name}.options", f"shards: {exc}") from None
    root = Path(spec.root).expanduser()
    if not root.exists():
        raise ConfigError(f"{field_name}.root", f"{root} does not exist")
    name = spec.split_name(role) if role is not None else split
    try:
        return ADAPTERS[spec.kind](root, split=name, image_size=size, **spec.options)
    except TypeError as exc:
        raise ConfigError(f"{field_name}.options", f"{spec.kind}: {exc}") from None


def first_items(dataset: Dataset, limit: int) -> Dataset:
    """The first ``limit`` items; an adapter keeps its ``records`` (texts and labels without pixels)."""
    if hasattr(dataset, "records"):
        dataset.records = dataset.records[:limit]
        return dataset
    return Subset(dataset, range(limit))


class CachedDataset(Dataset):
    """Keeps each sample after its first load (phantoms are drawn, JPEGs decoded, only once).

    The cache lives in the process that loads, so use it with ``num_workers: 0`` (each worker
    would otherwise hold its own copy). ``records`` and ``label_names`` of the wrapped adapter stay
    visible, so labels and texts can be read without pixels.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.cache:
            self.cache[index] = self.dataset[index]
        return self.cache[index]

    @property
    def records(self):
        return getattr(self.dataset, "records", None)


def unwrap_dataset(dataset: Dataset) -> Dataset:
    """The adapter inside caches, subsets and other wrappers that keep it as ``.dataset``."""
    while hasattr(dataset, "dataset") and isinstance(getattr(dataset, "dataset"), Dataset):
        dataset = dataset.dataset
    return dataset


def build_role_datasets(specs: Sequence[DatasetSpec], role: str, image_size: tuple[int, int] | None, *,
                        field_name: str = "data") -> Dataset | None:
    """The ``role`` splits of every spec in a list that has one, concatenated (None if none has);
    errors name ``<field_name>[i]``."""
    parts = [build_dataset(spec, role, image_size, field_name=f"{field_name}[{i}]") for i, spec in enumerate(specs) if spec.has_split(role)]
    return ConcatDataset(parts) if parts else None


def dataset_label_names(dataset: Dataset) -> tuple[str, ...]:
    """The label space of the adapter inside ``dataset`` (a DatasetError when it has none)."""
    names = getattr(unwrap_dataset(dataset), "label_names", None)
    if not names:
        raise DatasetError(type(unwrap_dataset(dataset)).__name__, "has no label_names: it cannot train a classifier")
    return tuple(names)


def label_matrix(dataset: Dataset, label_names: tuple[str, ...]) -> np.ndarray:
    """``(N, K)`` labels over ``label_names`` without reading pixels where the dataset allows it."""
    inner = unwrap_dataset(dataset)
    records = getattr(inner, "records", None)
    if records is not None and not getattr(inner, "_align", False):
        rows = [[float((r.labels or {}).get(name, math.nan)) for name in label_names] for r in records]
        return np.array(rows, dtype=np.float64).reshape(len(records), len(label_names))
    source = dataset_label_names(dataset)
    position = {name: i for i, name in enumerate(source)}
    rows = []
    for index in range(len(dataset)):
        labels = dataset[index].labels
        rows.append([float(labels[position[n]]) if labels is not None and n in position else math.nan for n in label_names])
    return np.array(rows, dtype=np.float64).reshape(len(dataset), len(label_names))
