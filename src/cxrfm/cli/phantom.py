"""``cxrfm phantom``: write procedural chest phantoms as a ready-to-use image folder.

Writes ``images/*.png``, ``masks/*.png`` (lung fields), ``chest_masks/*.png`` (thoracic cavity), a
``manifest.csv`` and ``manifest.jsonl`` that :class:`cxrfm.data.manifest.ManifestDataset` reads
(columns ``image, mask, chest_mask, split, view, patient_id, study_id, seed, findings,
impression, report_zh`` and one 1/0 column per finding in ``FINDINGS``) and ``gallery.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

from cxrfm.cli.common import fraction, non_negative_int, positive_int

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write procedural chest phantom radiographs, masks and a manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--count", type=positive_int, default=16, help="number of phantoms (default 16)")
    parser.add_argument("--size", type=positive_int, nargs=2, default=(512, 512), metavar=("H", "W"), help="image size")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first phantom; phantom i uses seed + i")
    parser.add_argument(
        "--finding",
        dest="finding_probs",
        action="append",
        default=None,
        metavar="NAME=PROB",
        help="probability of a finding, e.g. --finding 'Pleural Effusion=0.3' (repeatable; "
        "default: the built-in mix; --finding none for all-normal phantoms)",
    )
    parser.add_argument("--val-fraction", type=fraction, default=0.1, help="share of phantoms in the val split")
    parser.add_argument("--test-fraction", type=fraction, default=0.1, help="share of phantoms in the test split")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth of the images")
    parser.add_argument("--no-gallery", action="store_true", help="do not write gallery.png")
    parser.set_defaults(func=run)


def parse_finding_probs(values: list[str] | None) -> dict[str, float] | None:
    """``["Pleural Effusion=0.3", "Nodule=0.1"]`` -> dict; None -> the default mix; ``["none"]`` -> {}."""
    from cxrfm.errors import ConfigError

    if values is None:
        return None
    probs: dict[str, float] = {}
    for text in values:
        if text.strip().lower() == "none":
            continue
        name, separator, value = text.partition("=")
        try:
            probability = float(value)
        except ValueError:
            probability = -1.0
        if not separator or not 0 <= probability <= 1:
            raise ConfigError("--finding", f"expected NAME=PROB with PROB in [0, 1], got {text!r}")
        probs[name.strip()] = probability
    return probs


def assign_split(seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of one phantom from its seed (stable when ``--count`` changes)."""
    bucket = int(hashlib.sha1(f"phantom-{seed}".encode()).hexdigest(), 16) % 10_000 / 10_000
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cxrfm.data.phantom import DEFAULT_FINDING_PROBS, PhantomConfig, PhantomDataset
    from cxrfm.errors import ConfigError
    from cxrfm.utils.runtime import output_folder

    if args.count < 1:
        raise ConfigError("--count", f"must be >= 1, got {args.count}")
    if not (0 <= args.val_fraction and 0 <= args.test_fraction and args.val_fraction + args.test_fraction <= 1):
        raise ConfigError("--val-fraction/--test-fraction", "must be >= 0 and sum to at most 1")
    if args.seed < 0:
        raise ConfigError("--seed", f"must be >= 0, got {args.seed}")
    probs = parse_finding_probs(args.finding_probs)
    dataset = PhantomDataset(
        args.count,
        image_size=tuple(args.size),
        seed=args.seed,
        finding_probs=DEFAULT_FINDING_PROBS if probs is None else probs,
        config=PhantomConfig(size=tuple(args.size)),
    )
    out = output_folder(args.out, "--out")
    for folder in ("images", "masks", "chest_masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows, gallery = [], []
    for index in tqdm(range(args.count), desc="phantoms", unit="img"):
        case = dataset.case(index)
        rows.append(_write_case(out, case, args))
        if len(gallery) < 8:
            gallery.append(case)
    _write_manifests(out, rows)
    if not args.no_gallery:
        from cxrfm.figures.phantom import save_phantom_gallery

        save_phantom_gallery(gallery, out / "gallery.png")
    counts = {split: sum(row["split"] == split for row in rows) for split in ("train", "val", "test")}
    log.info("wrote %d phantoms to %s (train %d / val %d / test %d)", len(rows), out, *counts.values())
    return 0


def _write_case(out: Path, case, args: argparse.Namespace) -> dict:
    from cxrfm.io import write_image

    seed = case.meta["seed"]
    stem = f"phantom_{seed:07d}"
    write_image(out / "images" / f"{stem}.png", case.image, bits=args.bits)
    write_image(out / "masks" / f"{stem}.png", case.lung_mask)
    write_image(out / "chest_masks" / f"{stem}.png", case.chest_mask)
    row = {
        "image": f"images/{stem}.png",
        "mask": f"masks/{stem}.png",
        "chest_mask": f"chest_masks/{stem}.png",
        "split": assign_split(seed, args.val_fraction, args.test_fraction),
        "view": "PA",
        "patient_id": f"phantom-{seed}",
        "study_id": f"phantom-{seed}",
        "seed": seed,
        "findings": case.findings_en,
        "impression": case.impression_en,
        "report_zh": case.report_zh,
    }
    row.update({name: int(value) for name, value in zip(case.label_names, case.labels)})
    return row


def _write_manifests(out: Path, rows: list[dict]) -> None:
    import csv
    import json

    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
