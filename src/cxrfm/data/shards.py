"""WebDataset shards: pre-resized, encoded samples in tar files, for fast streaming at HD sizes.

Layout of a shard folder::

    index.json            counts, label names, image size, encoding, shard list (written last)
    shard-000000.tar      <key>.image.png, <key>.mask.png, <key>.labels.npy, <key>.findings.txt,
    shard-000001.tar      <key>.impression.txt, <key>.meta.json, <key>.view1.png (extra views)

``<key>`` is the item's index in the source dataset (zero-padded). Images are 16-bit PNG by
default, so 1280x1280 HD pretraining keeps more than 8 bits of the source's grey levels; masks
are 8-bit PNG (0/255); labels float32 ``.npy`` (NaN and -1 survive exactly).

Writing is atomic per shard (``.tar.tmp`` renamed when complete) and resumable: ``index.json``
is rewritten after each shard with ``"complete": false``, and a new call with the same settings
continues after the last finished shard.

Bad input is a :class:`~cxrfm.errors.DatasetError` naming the file (and the sample key): an
``index.json`` that is not UTF-8 JSON of the expected shape (shard names must be plain file names
in the folder), a listed or pattern-matched shard that does not exist, a pattern expanding to
more than :data:`MAX_SHARDS` names (checked before expanding), a shard that is not a tar or is
truncated (also when it ends cleanly but holds fewer samples than the index lists), and a sample
whose members are missing (image, ``meta.json``), undecodable, or of the wrong size, dtype or
shape. The sample-level errors are skipped and counted with ``ShardDataset(skip_unreadable=True)``;
errors about a whole shard are always raised (a damaged copy of the data set should be fixed, not
silently trained on in part).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from cxrfm.data.dataset import CXRDataset, Transform
from cxrfm.data.sample import CXRSample
from cxrfm.data.shard_format import (  # noqa: F401 - public names re-exported from here
    ENCODINGS,
    INDEX_FILE,
    INDEX_FORMAT,
    MAX_SHARDS,
    URL_SCHEME,
    check_index,
    decode_image,
    decode_sample,
    encode_image,
    encode_sample,
    expand_pattern,
    json_value,
    load_index,
    read_shard_index,
    tar_reason,
)
from cxrfm.errors import DatasetError, ImageReadError
from cxrfm.io import resize_image, resize_mask

log = logging.getLogger(__name__)

# Settings that must match for a resumed write to continue an earlier one.
_RESUME_KEYS = (
    "encoding",
    "image_size",
    "resize_mode",
    "max_samples_per_shard",
    "max_shard_bytes",
    "items",
    "items_digest",
    "label_names",
)
_TAR_HEADER_BYTES = 1024  # a member header plus padding, for the shard-size budget


# -------------------------------------------------------------------------------------- writing


def _resized(sample: CXRSample, image_size: tuple[int, int] | None, mode: str) -> CXRSample:
    if image_size is None or tuple(sample.image.shape[-2:]) == tuple(image_size):
        return sample
    sample.image = resize_image(sample.image, image_size, mode=mode)
    if sample.lung_mask is not None:
        sample.lung_mask = resize_mask(sample.lung_mask, image_size, mode=mode)
    if "extra_images" in sample.meta:
        sample.meta["extra_images"] = [resize_image(v, image_size, mode=mode) for v in sample.meta["extra_images"]]
    return sample


def _write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1, default=json_value), encoding="utf-8")
    os.replace(temporary, path)


class _ShardSink:
    """Collects samples into ``<prefix>-NNNNNN.tar.tmp`` and renames it when the shard is done."""

    def __init__(self, out_dir: Path, prefix: str, number: int):
        self.name = f"{prefix}-{number:06d}.tar"
        self.final_path = out_dir / self.name
        self.temporary_path = out_dir / (self.name + ".tmp")
        self.tar = tarfile.open(self.temporary_path, "w", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0
        self.num_bytes = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: reproducible shards
            self.tar.addfile(info, io.BytesIO(data))
            self.num_bytes += len(data) + _TAR_HEADER_BYTES
        self.num_samples += 1

    def close(self) -> None:
        self.tar.close()
        os.replace(self.temporary_path, self.final_path)


def _planned_bytes(members: dict[str, bytes]) -> int:
    return sum(len(data) + _TAR_HEADER_BYTES for data in members.values())


def _settings(
    dataset: Any, positions: Sequence[int], image_size, resize_mode, encoding, max_samples, max_bytes
) -> dict[str, Any]:
    return {
        "encoding": encoding,
        "image_size": None if image_size is None else list(image_size),
        "resize_mode": resize_mode,
        "max_samples_per_shard": max_samples,
        "max_shard_bytes": max_bytes,
        "items": len(positions),
        "items_digest": hashlib.sha1(",".join(map(str, positions)).encode()).hexdigest()[:16],
        "label_names": list(getattr(dataset, "label_names", ())),
    }


def _resume_state(out_dir: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The index of an earlier write with the same settings, or None to start fresh."""
    index_path = out_dir / INDEX_FILE
    if not index_path.is_file():
        if any(out_dir.glob("*.tar")):
            raise DatasetError(out_dir, "folder holds .tar files but no index.json; write shards into an empty folder")
        return None
    index = check_index(load_index(index_path), index_path, finished=False)
    if not resume:
        raise DatasetError(index_path, "shards already written here; choose another folder or pass resume=True")
    changed = [key for key in _RESUME_KEYS if index.get(key) != settings[key]]
    if changed:
        raise DatasetError(index_path, f"earlier shards used different settings {changed}; write into an empty folder")
    missing = [s["name"] for s in index["shards"] if not (out_dir / s["name"]).is_file()]
    if missing:
        raise DatasetError(index_path, f"listed shard(s) {missing[:3]} are missing; write into an empty folder")
    return index


class _EncodedItems(torch.utils.data.Dataset):
    """Position ``p`` -> ``(p, dataset index, members or None, (path, reason) or None)``.

    Loading, resizing and encoding run here, so with ``num_workers`` they run in DataLoader
    worker processes. An unreadable image comes back as a ``(path, reason)`` value for the writer
    to decide on (plain values: our exceptions do not survive pickling between processes).
    """

    def __init__(self, dataset: Any, positions: Sequence[int], image_size, resize_mode: str, encoding: str):
        self.dataset, self.positions = dataset, positions
        self.image_size, self.resize_mode, self.encoding = image_size, resize_mode, encoding

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, position: int) -> tuple[int, int, dict[str, bytes] | None, tuple[str, str] | None]:
        item = self.positions[position]
        load = self.dataset.load if isinstance(self.dataset, CXRDataset) else self.dataset.__getitem__
        try:
            sample = load(item)
        except ImageReadError as error:
            return position, item, None, (error.path, error.reason)
        if not sample.meta.get("has_image", True):
            raise DatasetError(getattr(self.dataset, "source", "dataset"), f"item {item} has no image; shards store pixels")
        return position, item, encode_sample(_resized(sample, self.image_size, self.resize_mode), self.encoding), None


def _encoded_stream(items: _EncodedItems, start: int, num_workers: int) -> Iterator[tuple]:
    """Encoded items from position ``start`` on, in order (loaded in ``num_workers`` processes)."""
    remaining = torch.utils.data.Subset(items, range(start, len(items)))
    if num_workers == 0:
        yield from (remaining[i] for i in range(len(remaining)))
        return
    loader = torch.utils.data.DataLoader(
        remaining, batch_size=None, num_workers=num_workers, collate_fn=_unchanged, prefetch_factor=4
    )
    yield from loader


def _unchanged(value: Any) -> Any:
    return value


class _ShardWriter:
    """Appends encoded samples to numbered shards and keeps ``index.json`` up to date."""

    def __init__(self, out_dir: Path, index: dict[str, Any], prefix: str):
        self.out_dir, self.index, self.prefix = out_dir, index, prefix
        self.sink: _ShardSink | None = None
        self.shard_start = 0

    def add(self, position: int, item: int, members: dict[str, bytes]) -> None:
        sink = self.sink
        if sink is not None and (
            sink.num_samples >= self.index["max_samples_per_shard"]
            or sink.num_bytes + _planned_bytes(members) > self.index["max_shard_bytes"]
        ):
            self.finish_shard(position)
        if self.sink is None:
            self.sink, self.shard_start = _ShardSink(self.out_dir, self.prefix, len(self.index["shards"])), position
        self.sink.add(f"{item:09d}", members)

    def skip(self, position: int, item: int, path: str, reason: str) -> None:
        self.index["skipped"].append({"position": position, "index": item, "path": path, "reason": reason})

    def finish_shard(self, end: int) -> None:
        """Close the open shard (items up to position ``end``, exclusive) and record it."""
        if self.sink is None:
            return
        self.sink.close()
        self.index["shards"].append(
            {
                "name": self.sink.name,
                "num_samples": self.sink.num_samples,
                "bytes": self.sink.final_path.stat().st_size,
                "start": self.shard_start,
                "end": end,
            }
        )
        self.sink = None
        _write_json_atomic(self.out_dir / INDEX_FILE, self.index)


def write_shards(
    dataset: CXRDataset | torch.utils.data.Dataset,
    out_dir: str | Path,
    image_size: tuple[int, int] | None = None,
    *,
    resize_mode: str = "pad",
    encoding: str = "png16",
    max_samples_per_shard: int = 1000,
    max_shard_bytes: int = 1 << 30,
    indices: Sequence[int] | None = None,
    prefix: str = "shard",
    skip_unreadable: bool | None = None,
    resume: bool = True,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``dataset`` (or its ``indices``) as WebDataset shards in ``out_dir``; return the index.

    Args:
        dataset: a :class:`CXRDataset` (or any dataset of :class:`CXRSample`).
        out_dir: an empty folder, or one holding an unfinished write with the same settings.
        image_size: ``(H, W)`` every image/mask is resized to (``resize_mode`` pad/stretch);
            None keeps the dataset's sizes (its ``image_size`` when it has one).
        encoding: ``"png16"`` (default, lossless at 16 bits), ``"png8"`` or ``"jpeg"``.
        max_samples_per_shard, max_shard_bytes: a shard is closed when either would be exceeded
            (a single sample larger than ``max_shard_bytes`` gets a shard of its own).
        indices: dataset indices to write, in order; None = all.
        skip_unreadable: leave out items whose image cannot be read (listed in the index as
            ``skipped``) instead of raising; None follows ``dataset.skip_unreadable``.
        resume: continue an unfinished write with the same settings (else DatasetError).
        num_workers: processes that load, resize and encode (0 = this process); the written
            order and shard contents do not depend on it.
        progress: show a tqdm progress bar.

    Returns:
        The index dict also saved as ``out_dir/index.json``.
    """
    from tqdm.auto import tqdm

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if max_samples_per_shard < 1 or max_shard_bytes < 1:
        raise ValueError("max_samples_per_shard and max_shard_bytes must be positive")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name, or no permission
        raise DatasetError(out_dir, f"cannot create the output folder ({error.strerror or error})") from None
    image_size = image_size if image_size is not None else getattr(dataset, "image_size", None)
    image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    positions = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if skip_unreadable is None:
        skip_unreadable = bool(getattr(dataset, "skip_unreadable", False))
    settings = _settings(dataset, positions, image_size, resize_mode, encoding, max_samples_per_shard, max_shard_bytes)
    index = _resume_state(out_dir, settings, resume)
    if index is not None and index.get("complete"):
        log.info("%s: shards already complete (%d samples)", out_dir, index["num_samples"])
        return index
    for stale in out_dir.glob(f"{prefix}-*.tar.tmp"):
        stale.unlink()  # an interrupted shard: rewritten below
    index = index or {
        "format": INDEX_FORMAT,
        **settings,
        "source": getattr(dataset, "source", type(dataset).__name__),
        "dataset": type(dataset).__name__,
        "shards": [],
        "skipped": [],
        "complete": False,
    }
    start = index["shards"][-1]["end"] if index["shards"] else 0
    index["skipped"] = [s for s in index["skipped"] if s["position"] < start]
    writer = _ShardWriter(out_dir, index, prefix)
    items = _EncodedItems(dataset, positions, image_size, resize_mode, encoding)
    bar = tqdm(total=len(positions), initial=start, desc=f"writing {out_dir.name}", unit="img", disable=not progress)
    with bar:
        for position, item, members, error in _encoded_stream(items, start, num_workers):
            bar.update(1)
            if error is not None and not skip_unreadable:
                raise ImageReadError(*error)
            if error is not None:
                writer.skip(position, item, *error)
            else:
                writer.add(position, item, members)
        writer.finish_shard(len(positions))
    index.update(
        num_samples=sum(s["num_samples"] for s in index["shards"]),
        splits=_split_counts(dataset, positions, index["skipped"]),
        complete=True,
    )
    _write_json_atomic(out_dir / INDEX_FILE, index)
    if index["skipped"]:
        log.warning("%s: skipped %d unreadable item(s); see 'skipped' in %s", out_dir, len(index["skipped"]), INDEX_FILE)
    return index


def _split_counts(dataset: Any, positions: Sequence[int], skipped: list[dict[str, Any]]) -> dict[str, int]:
    records = getattr(dataset, "records", None)
    if records is None:
        return {}
    left_out = {s["position"] for s in skipped}
    counts = Counter(str(records[item].split) for p, item in enumerate(positions) if p not in left_out)
    return dict(counts)


# -------------------------------------------------------------------------------------- reading


def _buffer_shuffle(samples: Iterator[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle: fill a buffer, then emit a random element per incoming one."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = sample
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(IterableDataset):
    """Stream :class:`CXRSample` from shards written by :func:`write_shards`.

    Shards are split so that DDP ranks (``split_by_node``, from ``RANK``/``WORLD_SIZE`` or
    ``torch.distributed``) and DataLoader workers (``split_by_worker``) read disjoint shards; with
    ``shuffle`` the shard order is permuted first with ``seed + epoch`` (the same on every rank, so
    the split stays disjoint) and samples pass through a ``shuffle_buffer`` seeded from
    ``(seed, epoch, rank, worker)``. Decoding happens where the iteration runs, i.e. in the
    DataLoader workers. Call :meth:`set_epoch` before each epoch for a new order.

    Ranks may get unequal numbers of samples (shards are whole); DDP training should bound each
    epoch by a step count (e.g. ``num_samples // (world_size * batch_size)``) rather than by
    exhausting the iterator.

    Args:
        source: a shard folder with ``index.json``, a brace pattern (``out/shard-{000000..000009}.tar``),
            or a list of shard paths.
        shuffle: permute shards and samples (training); False reads in written order.
        shuffle_buffer: samples held for shuffling (memory: buffer x one encoded sample).
        seed: base seed of both shuffles.
        split_by_node, split_by_worker: give each rank / worker its own shards.
        transform: callable applied to each decoded sample.
        skip_unreadable: when True a sample that cannot be decoded (a corrupt or missing member,
            a wrong size, dtype or shape) is left out, counted in :attr:`skipped_count` /
            :attr:`skipped_keys` and logged every ``log_every`` skips, as in the map-style
            datasets' option of that name; when False its :class:`DatasetError` (naming the shard
            and the sample key) propagates. A shard that cannot be read as a whole (not a tar,
            truncated, fewer samples than the index lists) always raises. Counters are per
            process: with DataLoader workers each worker counts its own.

    Every problem with the source (no shard found, a listed or matched shard missing, a bad
    index, a pattern expanding to more than :data:`MAX_SHARDS` names) is a :class:`DatasetError`
    raised here, before iterating.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        *,
        shuffle: bool = False,
        shuffle_buffer: int = 256,
        seed: int = 0,
        split_by_node: bool = True,
        split_by_worker: bool = True,
        transform: Transform | None = None,
        skip_unreadable: bool = False,
        log_every: int = 100,
    ):
        super().__init__()
        self.source = str(source) if isinstance(source, (str, Path)) else f"{len(source)} shard path(s)"
        self.urls, self.index = self._resolve(source)
        if not self.urls:
            raise DatasetError(str(source), "no shards found")
        # Samples each shard of the index holds: a shard that yields fewer was cut short.
        self._expected_counts: dict[str, int] = self._expected(self.urls, self.index, source)
        self.label_names: tuple[str, ...] = tuple(self.index.get("label_names", ()))
        size = self.index.get("image_size")
        self.image_size = None if size is None else (int(size[0]), int(size[1]))
        self.num_samples: int | None = self.index.get("num_samples")
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.seed = int(seed)
        self.split_by_node = split_by_node
        self.split_by_worker = split_by_worker
        self.transform = transform
        self.skip_unreadable = bool(skip_unreadable)
        self.log_every = max(1, int(log_every))
        self.skipped_count = 0
        self.skipped_keys: list[str] = []
        self.epoch = 0

    @staticmethod
    def _resolve(source: str | Path | Sequence[str | Path]) -> tuple[list[str], dict[str, Any]]:
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            index = read_shard_index(source)
            urls = [str(Path(source) / s["name"]) for s in index["shards"]]
            missing = [s["name"] for s in index["shards"] if not (Path(source) / s["name"]).is_file()]
            if missing:
                raise DatasetError(Path(source) / INDEX_FILE, f"listed shard(s) {missing[:3]} are missing ({len(missing)} of {len(urls)})")
            return urls, index
        urls = expand_pattern(str(source)) if isinstance(source, (str, Path)) else [str(u) for u in source]
        local = [url for url in urls if not URL_SCHEME.match(url)]
        missing = [url for url in local if not Path(url).is_file()]
        if urls and len(missing) == len(urls):
            raise DatasetError(str(source), f"no shard found: {missing[0]} is not a file" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if missing:
            raise DatasetError(missing[0], f"shard not found ({len(missing)} of the {len(urls)} shard(s) of {source} are missing)")
        index_path = Path(local[0]).parent / INDEX_FILE if local else None
        index = read_shard_index(index_path.parent) if index_path is not None and index_path.is_file() else {}
        return urls, index

    @staticmethod
    def _expected(urls: list[str], index: dict[str, Any], source: Any) -> dict[str, int]:
        if not index:
            return {}
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            folder = Path(source)
        else:
            folder = Path(next(u for u in urls if not URL_SCHEME.match(u))).parent
        counts = {str(folder / s["name"]): s["num_samples"] for s in index["shards"]}
        return {url: counts[str(Path(url))] for url in urls if str(Path(url)) in counts}

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle order of the next iteration (same epoch -> same order)."""
        self.epoch = int(epoch)

    def shards_for_this_process(self) -> list[str]:
        """The shards this rank and DataLoader worker read this epoch, in reading order."""
        from webdataset.utils import pytorch_worker_info

        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)
        rank, world_size, worker, num_workers = pytorch_worker_info()
        if self.split_by_node:
            urls = urls[rank::world_size]
        if self.split_by_worker:
            urls = urls[worker::num_workers]
        return urls

    def __iter__(self) -> Iterator[CXRSample]:
        from webdataset.utils import pytorch_worker_info

        urls = self.shards_for_this_process()
        rank, _, worker, _ = pytorch_worker_info()
        if not urls:
            log.warning("rank %d worker %d got no shard: use more shards than ranks x workers", rank, worker)
            return
        samples: Iterator[Any] = (raw for url in urls for raw in self._shard_samples(url))
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}")
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        num_labels = len(self.label_names) or None
        for raw in samples:
            try:
                sample = decode_sample(raw, image_size=self.image_size, num_labels=num_labels)
            except DatasetError as error:
                if not self.skip_unreadable:
                    raise
                self._note_skip(raw, error)
                continue
            yield self.transform(sample) if self.transform is not None else sample

    def _shard_samples(self, url: str) -> Iterator[dict[str, Any]]:
        """The raw samples of one shard; a shard that cannot be read through raises DatasetError."""
        from webdataset.tariterators import tarfile_samples

        count = 0
        stream = iter(tarfile_samples([{"url": url}]))
        while True:
            try:
                raw = next(stream)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - tarfile, gopen, webdataset: the file itself is bad
                raise DatasetError(url, f"{tar_reason(error)} (after {count} sample(s))") from None
            count += 1
            yield raw
        expected = self._expected_counts.get(url)
        if expected is not None and count != expected:
            raise DatasetError(
                url, f"holds {count} sample(s) but {INDEX_FILE} lists {expected}: the file is truncated or was replaced"
            )

    def _note_skip(self, raw: dict[str, Any], error: DatasetError) -> None:
        self.skipped_count += 1
        if len(self.skipped_keys) < 10_000:
            self.skipped_keys.append(f"{raw.get('__url__')}:{raw.get('__key__')}")
        if self.skipped_count == 1 or self.skipped_count % self.log_every == 0:
            log.warning("%s: skipped %d unreadable sample(s) so far; latest: %s", self.source, self.skipped_count, error)


