"""The base dataset every adapter returns: records in, :class:`CXRSample` out.

An adapter's only job is to turn its published metadata into a list of :class:`CXRRecord` (paths,
labels, report text, meta) and its ordered ``label_names``. :class:`CXRDataset` does everything
else the same way for every source: split/view filtering, reading and resizing pixels, label
tensors (optionally aligned to a shared vocabulary), report files, skipping unreadable images and
checking a dataset before a long run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrfm.data.labels import align_labels, canonical_finding
from cxrfm.data.reports import read_report
from cxrfm.data.sample import CXRSample
from cxrfm.data.tables import iter_split_names, normalise_view
from cxrfm.errors import CXRFMError, DatasetError, ImageReadError
from cxrfm.io import read_image, read_mask, resize_image, resize_mask

log = logging.getLogger(__name__)

Transform = Callable[[CXRSample], CXRSample]


@dataclass(slots=True)
class CXRRecord:
    """What a dataset knows about one item before any pixel is read.

    Attributes:
        image: path of the (first) image, or None when the dataset has no pixels for it
            (text-only use, see ``images_required``).
        mask: path of a binary lung mask of the same size as the image, or None.
        labels: ``{label_name: value}`` over the dataset's ``label_names`` (1 / 0 / -1 uncertain /
            NaN unknown); names left out are NaN. None = not labelled.
        findings, impression: report sections, when known up front.
        split: ``"train"`` / ``"val"`` / ``"test"`` / None.
        meta: plain Python values: ``view``, ``patient_id``, ``study_id`` and dataset-specific fields.
        extra_images: further views of the same study (loaded into ``meta["extra_images"]``); None
            entries are views known to exist but not available here (placeholders, like ``image``).
        report_file: a free-text report parsed into findings/impression when the item is loaded
            (MIMIC: reading 200k report files up front would take minutes).
    """

    image: Path | None
    mask: Path | None = None
    labels: Mapping[str, float] | None = None
    findings: str | None = None
    impression: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra_images: tuple[Path | None, ...] = ()
    report_file: Path | None = None

    def __post_init__(self) -> None:
        self.image = _as_path(self.image)
        self.mask = _as_path(self.mask)
        self.report_file = _as_path(self.report_file)
        self.extra_images = tuple(_as_path(p) for p in self.extra_images)


def _as_path(value: str | Path | None) -> Path | None:
    # Paths pass through untouched: re-parsing them costs seconds for 377k MIMIC records.
    return value if value is None or isinstance(value, Path) else Path(value)


@dataclass
class UnreadableItem:
    """One problem found by :meth:`CXRDataset.validate`."""

    index: int
    path: str
    reason: str


@dataclass
class ValidationReport:
    """Result of :meth:`CXRDataset.validate`: how many items were read and which failed."""

    num_checked: int
    unreadable: list[UnreadableItem]

    @property
    def ok(self) -> bool:
        return not self.unreadable

    def summary(self) -> str:
        lines = [f"checked {self.num_checked} item(s): {len(self.unreadable)} unreadable"]
        lines += [f"  [{item.index}] {item.path}: {item.reason}" for item in self.unreadable]
        return "\n".join(lines)


def _as_record(value: CXRRecord | Mapping[str, Any], source: str, position: int = 0) -> CXRRecord:
    if isinstance(value, CXRRecord):
        return value
    if not isinstance(value, Mapping):
        raise DatasetError(source, f"record {position} is a {type(value).__name__}, not a CXRRecord or a mapping")
    known = {f.name for f in dataclasses.fields(CXRRecord)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise DatasetError(source, f"record has unknown field(s) {unknown}; allowed: {sorted(known)}")
    if "image" not in value:
        raise DatasetError(source, "record has no 'image' field")
    try:
        return CXRRecord(**value)
    except (TypeError, ValueError) as error:  # e.g. a path that is a number
        raise DatasetError(source, f"record {position}: {error}") from None


class CXRDataset(Dataset):
    """A map-style dataset of chest X-rays returning :class:`CXRSample`.

    Each sample: ``image`` ``(1, H, W)`` float32 in ``[0, 1]``; ``lung_mask`` ``(1, H, W)`` in
    ``{0, 1}`` or None; ``labels`` ``(K,)`` over :attr:`label_names` or None; report sections; and
    ``meta`` with ``path``, ``split``, ``index``, ``has_image``, ``original_size`` (``(H, W)`` on
    disk, before resizing), ``view``, ``patient_id``, ``study_id`` and
    dataset-specific fields (``extra_images``: list of ``(1, H, W)`` tensors for multi-view studies).

    Args:
        records: the items (:class:`CXRRecord` or dicts with its fields).
        label_names: the dataset's own label space, ordered.
        image_size: ``(H, W)`` to resize every image and mask to, or None to keep native sizes.
        resize_mode: ``"pad"`` (keep aspect ratio, pad with black) or ``"stretch"``.
        transform: callable applied to each :class:`CXRSample` after loading.
        split: keep only these split(s) (``"train"``, ``["train", "val"]``); None keeps all.
            A split no record has raises DatasetError listing those present.
        views: keep only records whose ``meta["view"]`` is one of these (e.g. ``("PA", "AP")``).
        skip_unreadable: when True an item that cannot be read is replaced by the next readable
            item (deterministically: index+1, index+2, ...), counted in :attr:`skipped_count` /
            :attr:`skipped_paths` and logged every ``log_every`` skips. "Cannot be read" is any
            failure while reading the item (its image, extra views, mask, report file, labels),
            whatever the exception: see :meth:`read`. When False that error (an
            :class:`ImageReadError` or :class:`DatasetError` naming the file) propagates. A failure
            in ``transform`` is not a read failure: it propagates unless it is one of those two
            types. Counters are per process:
            with DataLoader workers each worker counts its own.
        images_required: when False, an item whose image path is None or does not exist gets an
            all-zero placeholder image (``(1, *image_size)``, or ``(1, 0, 0)`` without a size) and
            ``meta["has_image"] = False``: the text and labels stay usable without the pixels.
        align_to: re-express labels over this vocabulary (e.g. ``labels.FINDINGS``) after
            canonicalising the dataset's names; :attr:`label_names` then equals ``align_to``.
        source: the file or folder the records came from (named in errors and logs).
    """

    def __init__(
        self,
        records: Iterable[CXRRecord | Mapping[str, Any]],
        *,
        label_names: Sequence[str] = (),
        image_size: tuple[int, int] | None = None,
        resize_mode: str = "pad",
        transform: Transform | None = None,
        split: str | Sequence[str] | None = None,
        views: Sequence[str] | None = None,
        skip_unreadable: bool = False,
        images_required: bool = True,
        align_to: Sequence[str] | None = None,
        source: str | Path | None = None,
        log_every: int = 100,
    ):
        self.source = str(source) if source is not None else type(self).__name__
        if resize_mode not in ("pad", "stretch"):
            raise ValueError(f"resize_mode must be 'pad' or 'stretch', got {resize_mode!r}")
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.resize_mode = resize_mode
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.images_required = images_required
        self.log_every = max(1, int(log_every))
        self.dataset_label_names: tuple[str, ...] = tuple(label_names)
        self.label_names: tuple[str, ...] = tuple(align_to) if align_to is not None else self.dataset_label_names
        self._align = align_to is not None
        all_records = [_as_record(r, self.source, position) for position, r in enumerate(records)]
        self.records: list[CXRRecord] = self._filter(all_records, split, views)
        self.skipped_count = 0
        self.skipped_paths: list[str] = []
        self._unreadable: dict[int, CXRFMError] = {}
        self._warned_missing_report = False

    # ----------------------------------------------------------------------------------- filtering
    def _filter(
        self, records: list[CXRRecord], split: str | Sequence[str] | None, views: Sequence[str] | None
    ) -> list[CXRRecord]:
        wanted_splits = set(iter_split_names(split))
        if wanted_splits:
            present = Counter(r.split for r in records)
            absent = sorted(wanted_splits - set(present))
            if absent:
                raise DatasetError(
                    self.source,
                    f"no item has split {absent}; splits present: {dict(sorted(present.items(), key=str))} "
                    "(split=None uses every item)",
                )
            records = [r for r in records if r.split in wanted_splits]
        if views is not None:
            wanted_views = {normalise_view(v) for v in views}
            records = [r for r in records if normalise_view(r.meta.get("view")) in wanted_views]
        return records

    # ------------------------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        size = "native" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        return (
            f"{type(self).__name__}({len(self)} items, splits={self.split_counts()}, "
            f"labels={len(self.label_names)}, size={size}, source={self.source!r})"
        )

    def split_counts(self) -> dict[str | None, int]:
        """``{split: number of items}`` in record order of first appearance."""
        return dict(Counter(r.split for r in self.records))

    def missing_images(self) -> list[Path]:
        """Image paths (first and extra views) that do not exist on disk; cheap (stat only)."""
        missing = []
        for record in self.records:
            for path in (record.image, *record.extra_images):
                if path is not None and not _exists(path):
                    missing.append(path)
        return missing

    # ------------------------------------------------------------------------------------ loading
    def __getitem__(self, index: int) -> CXRSample:
        index = self._check_index(index)
        if not self.skip_unreadable:
            return self.load(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            known_error = self._unreadable.get(candidate)
            if known_error is not None:
                self._note_skip(known_error)
                continue
            try:
                return self.load(candidate)
            except (ImageReadError, DatasetError) as error:
                self._unreadable[candidate] = error
                self._note_skip(error)
        raise DatasetError(self.source, f"none of the {len(self)} images could be read")

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return index

    def load(self, index: int) -> CXRSample:
        """Item ``index`` with no skipping, ``transform`` applied.

        Raises:
            ImageReadError: an image, extra view or mask cannot be read (naming that file); also any
                unexpected exception while reading the item, wrapped and naming its image.
            DatasetError: the item's mask does not match its image, its report file or labels are
                unreadable (naming the file / item).
        """
        sample = self.read(index)
        return self.transform(sample) if self.transform is not None else sample

    def read(self, index: int) -> CXRSample:
        """Item ``index`` as read from disk, before ``transform``; every failure is one of our errors.

        An exception of any other type raised while reading (a bug a corrupt file tickles in a
        decoder, an adapter's ``annotate`` choking on one row's metadata) is wrapped into an
        :class:`ImageReadError` naming the item's image and index, so ``skip_unreadable`` can skip it.
        """
        index = self._check_index(index)
        record = self.records[index]
        try:
            return self._read_record(record, index)
        except CXRFMError:
            raise
        except Exception as error:  # one bad item must not escape as a raw traceback
            where = record.image if record.image is not None else f"{self.source} item {index}"
            raise ImageReadError(
                where, f"item {index}: unexpected {type(error).__name__} while reading it: {error}"
            ) from error

    def _read_record(self, record: CXRRecord, index: int) -> CXRSample:
        image, original_size = self._read_view(record.image, index)
        has_image = original_size is not None
        meta = {**record.meta, "path": None if record.image is None else str(record.image)}
        meta.update(split=record.split, index=index, has_image=has_image)
        meta["original_size"] = list(original_size) if has_image else None
        lung_mask = None
        if record.mask is not None and has_image:
            lung_mask = self._read_lung_mask(record.mask, record.image, original_size)
        if record.extra_images:
            meta["extra_images"] = [self._read_view(path, index)[0] for path in record.extra_images]
        findings, impression = self._report_text(record)
        sample = CXRSample(
            image=image,
            lung_mask=lung_mask,
            labels=self._labels_of_item(record, index),
            findings=findings,
            impression=impression,
            meta=meta,
        )
        return self.annotate(sample)

    def annotate(self, sample: CXRSample) -> CXRSample:
        """Hook for adapters to add derived fields (e.g. resized boxes) before ``transform`` runs."""
        return sample

    def _read_view(self, path: Path | None, index: int) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """``((1, H, W) image, its size on disk)``, or a placeholder and None for an allowed missing image."""
        if path is None or (not self.images_required and not _exists(path)):
            if self.images_required:
                raise DatasetError(self.source, f"item {index} has no image path")
            size = self.image_size or (0, 0)
            return torch.zeros((1, *size), dtype=torch.float32), None
        image = read_image(path)
        original_size = (int(image.shape[0]), int(image.shape[1]))
        if self.image_size is not None:
            image = resize_image(image, self.image_size, mode=self.resize_mode)
        return _to_tensor(image), original_size

    def _read_lung_mask(self, path: Path, image_path: Path | None, image_shape: tuple[int, int]) -> torch.Tensor:
        mask = read_mask(path)
        if tuple(mask.shape) != tuple(image_shape):
            # A mismatched mask would silently mark the wrong pixels as lung.
            raise DatasetError(path, f"mask is {tuple(mask.shape)} but its image {image_path} is {tuple(image_shape)}")
        if self.image_size is not None:
            mask = resize_mask(mask, self.image_size, mode=self.resize_mode)
        return _to_tensor(mask)

    def _report_text(self, record: CXRRecord) -> tuple[str | None, str | None]:
        findings, impression = record.findings, record.impression
        if record.report_file is None or findings is not None or impression is not None:
            return findings, impression
        if not record.report_file.is_file():
            if not self._warned_missing_report:
                log.warning("%s: report file %s not found; findings/impression left empty", self.source, record.report_file)
                self._warned_missing_report = True
            return None, None
        try:
            return read_report(record.report_file)
        except OSError as error:
            raise DatasetError(record.report_file, f"cannot read the report file ({error.strerror or error})") from error

    def labels_for(self, record: CXRRecord) -> torch.Tensor | None:
        """``(K,)`` float32 over :attr:`label_names`; NaN where unknown; None for unlabelled datasets."""
        if not self.dataset_label_names:
            return None
        given = record.labels or {}
        values = torch.tensor(
            [float(given.get(name, math.nan)) for name in self.dataset_label_names], dtype=torch.float32
        )
        if self._align:
            canonical = [canonical_finding(name) or name for name in self.dataset_label_names]
            values = align_labels(values, canonical, self.label_names)
        return values

    def _labels_of_item(self, record: CXRRecord, index: int) -> torch.Tensor | None:
        try:
            return self.labels_for(record)
        except (TypeError, ValueError) as error:
            bad = {name: value for name, value in (record.labels or {}).items() if not _is_number(value)}
            raise DatasetError(self.source, f"item {index}: label value(s) {bad or '?'} are not numbers ({error})") from error

    def _note_skip(self, error: CXRFMError) -> None:
        self.skipped_count += 1
        path = str(getattr(error, "path", None) or getattr(error, "source", ""))
        if path not in self.skipped_paths:
            self.skipped_paths.append(path)
        if self.skipped_count == 1 or self.skipped_count % self.log_every == 0:
            log.warning(
                "%s: skipped %d unreadable item(s) so far (%d distinct file(s)); latest: %s",
                self.source,
                self.skipped_count,
                len(self.skipped_paths),
                error,
            )

    # --------------------------------------------------------------------------------- validation
    def validate(self, progress: bool = False) -> ValidationReport:
        """Read every image, extra view and mask once (no resizing) and report the unreadable ones.

        Worth running before a long job: one bad file among 200k otherwise stops the run hours in.
        """
        from tqdm.auto import tqdm

        problems = []
        for index in tqdm(range(len(self)), desc="checking images", unit="item", disable=not progress):
            record = self.records[index]
            problem = self._check_record(record)
            if problem is not None:
                problems.append(UnreadableItem(index, *problem))
        if problems:
            log.warning("%s: %d of %d item(s) unreadable", self.source, len(problems), len(self))
        return ValidationReport(num_checked=len(self), unreadable=problems)

    def _check_record(self, record: CXRRecord) -> tuple[str, str] | None:
        """``(path, reason)`` of the first unreadable file of a record, or None."""
        image_shape = None
        for path in (record.image, *record.extra_images):
            if path is None or (not self.images_required and not _exists(path)):
                continue
            try:
                shape = read_image(path).shape
            except ImageReadError as error:
                return error.path, error.reason
            image_shape = shape if image_shape is None else image_shape
        if record.mask is not None and image_shape is not None:
            try:
                mask_shape = read_mask(record.mask).shape
            except ImageReadError as error:
                return error.path, error.reason
            if tuple(mask_shape) != tuple(image_shape):
                return str(record.mask), f"mask is {tuple(mask_shape)} but its image is {tuple(image_shape)}"
        return None


def _exists(path: Path) -> bool:
    """``path.exists()`` that answers False (it cannot be read either) for a name the OS refuses."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W)`` numpy -> ``(1, H, W)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(0)
