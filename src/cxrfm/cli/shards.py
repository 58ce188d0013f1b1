"""``cxrfm shards``: write a dataset as WebDataset shards (one folder per split), or describe them."""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from cxrfm.cli.common import non_negative_int, positive_int

log = logging.getLogger(__name__)

DATASET_KINDS = ("folder", "manifest", "openist", "covid", "iu-xray", "mimic", "chexpert", "nih", "rsna")  # = registry.ADAPTERS (tested)
_BYTE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _byte_count(text: str) -> int:
    """``"1G"``, ``"500M"``, ``"4096"`` -> bytes."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    multiplier = _BYTE_UNITS.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in _BYTE_UNITS else value
    try:
        return int(float(number) * multiplier)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1G, 500M, 4096)") from None


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as in a config file (``true``, ``2``, ``1e-4``, ``[PA, AP]``)."""
    from cxrfm.config import parse_yaml
    from cxrfm.errors import ConfigError

    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), parse_yaml(value, "--option") if value.strip() else None
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{key.strip()}: {exc.reason}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("shards", help="write / inspect WebDataset shards of a dataset")
    actions = parser.add_subparsers(dest="shards_action", metavar="ACTION", required=True)

    write = actions.add_parser(
        "write",
        help="write a dataset as shards, one folder per split (OUT/train, OUT/val, ...)",
        description="Pre-resize and encode a dataset into WebDataset shards under OUT/<split>/ "
        "(items without a split go to OUT/unassigned/). Re-running continues an interrupted write.",
    )
    write.add_argument("--dataset", required=True, choices=DATASET_KINDS, help="dataset adapter")
    write.add_argument("--root", required=True, type=Path, help="dataset folder (manifest: the manifest file)")
    write.add_argument("--out", required=True, type=Path, help="output folder")
    write.add_argument("--size", nargs=2, type=positive_int, default=[1280, 1280], metavar=("H", "W"), help="image size (default 1280 1280)")
    write.add_argument("--mode", choices=("pad", "stretch"), default="pad", help="resize mode (default pad)")
    write.add_argument("--split", action="append", help="only this split (repeatable); default all")
    write.add_argument("--encoding", choices=("png16", "png8", "jpeg"), default="png16", help="image encoding (default png16)")
    write.add_argument("--max-samples-per-shard", type=positive_int, default=1000, help="default 1000")
    write.add_argument("--max-shard-bytes", type=_byte_count, default=1 << 30, help="e.g. 1G (default), 500M")
    write.add_argument("--workers", type=non_negative_int, default=0, help="processes that read, resize and encode (default 0: this one)")
    write.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out (listed in index.json)")
    write.add_argument("--check", action="store_true", help="read every image once before writing and stop if any fails")
    write.add_argument(
        "--option",
        dest="options",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, repeatable: mask_root=DIR (folder), mask_source=lungvae (covid), "
        "image_root=DIR / views_per_study=2 (iu-xray), views=[PA,AP], val_fraction=0.1 (nih)",
    )
    write.set_defaults(func=run_write)

    info = actions.add_parser("info", help="summarise the shard folders under a directory")
    info.add_argument("folder", type=Path, help="a shard folder or the OUT of 'shards write'")
    info.set_defaults(func=run_info)


def run_write(args: argparse.Namespace) -> int:
    from cxrfm.data.registry import DatasetSpec, build_dataset
    from cxrfm.data.shards import write_shards

    options = {**dict(args.options), "resize_mode": args.mode, "skip_unreadable": args.skip_unreadable}
    spec = DatasetSpec(kind=args.dataset, root=str(args.root), options=options)
    # The dataset resizes (once, from the source pixels) so adapters can move what follows the
    # image geometry along with it (RSNA boxes); write_shards then finds the size already right.
    dataset = build_dataset(spec, args.split, image_size=tuple(args.size), field_name="--dataset")
    log.info("%r", dataset)
    if args.check:
        report = dataset.validate(progress=True)
        if not report.ok and not args.skip_unreadable:
            log.error("%s", report.summary())
            return 2
    by_split: dict[str, list[int]] = defaultdict(list)
    for position, record in enumerate(dataset.records):
        by_split[record.split or "unassigned"].append(position)
    for split, indices in by_split.items():
        index = write_shards(
            dataset,
            args.out / split,
            tuple(args.size),
            resize_mode=args.mode,
            encoding=args.encoding,
            max_samples_per_shard=args.max_samples_per_shard,
            max_shard_bytes=args.max_shard_bytes,
            indices=indices,
            skip_unreadable=args.skip_unreadable,
            num_workers=args.workers,
            progress=True,
        )
        log.info(
            "%s: %d samples in %d shard(s), %d skipped",
            args.out / split,
            index["num_samples"],
            len(index["shards"]),
            len(index["skipped"]),
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from cxrfm.data.shards import INDEX_FILE, read_shard_index

    folders = [args.folder] if (args.folder / INDEX_FILE).is_file() else sorted(p.parent for p in args.folder.glob(f"*/{INDEX_FILE}"))
    if not folders:
        log.error("no %s in %s or its sub-folders", INDEX_FILE, args.folder)
        return 2
    summary = {}
    for folder in folders:
        index = read_shard_index(folder)
        summary[str(folder)] = {
            "samples": index["num_samples"],
            "shards": len(index["shards"]),
            "bytes": sum(s["bytes"] for s in index["shards"]),
            "image_size": index["image_size"],
            "encoding": index["encoding"],
            "labels": len(index["label_names"]),
            "skipped": len(index["skipped"]),
        }
    print(json.dumps(summary, indent=1))  # the verb's output, meant for the terminal or a pipe
    return 0
