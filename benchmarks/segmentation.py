"""Lung-segmentation benchmark: Dice / IoU of a segmenter folder (and the classical fallback).

    .venv/bin/python benchmarks/segmentation.py --weights runs/segmenter-openist

Evaluates on OpenIST test (23 images, same mask convention as training) and on covid_chestxray
V7 masks (test split, 52 images, and all 427), raw and with the lung-envelope handling of the
retro-cardiac convention difference (see ``cxrfm.anatomy.evaluate``). Prints a Markdown table and
per-image timing; ``--json`` writes every per-image score.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from cxrfm.anatomy.evaluate import evaluate_masks, mask_predictor, segmentation_pairs
from cxrfm.anatomy.segmenter import LungSegmenter
from cxrfm.evaluation.segmentation import format_overlap_table
from cxrfm.utils import configure_logging

log = logging.getLogger("benchmarks.segmentation")


def _run(name: str, predictor, pairs, envelope: bool, rows: dict, details: dict) -> None:
    started = time.perf_counter()
    result = evaluate_masks(predictor, pairs, envelope=envelope)
    seconds = time.perf_counter() - started
    rows[f"{name} (raw)"] = result["raw"]
    if envelope:
        rows[f"{name} (lung envelopes)"] = result["envelope"]
    details[name] = {**result, "seconds_per_image": seconds / max(1, len(pairs))}
    log.info("%s: %d images, %.3f s/image (incl. envelope scoring)", name, len(pairs), seconds / max(1, len(pairs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="folder with config.json + model.safetensors")
    parser.add_argument("--data-root", default="../shared/data", help="folder holding lung_seg_openist/ and covid_chestxray/")
    parser.add_argument("--covid-splits", nargs="*", default=["test", "all"], help="covid splits to score ('all' = 427)")
    parser.add_argument("--no-classical", action="store_true", help="skip the classical fallback rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write per-image scores and summaries here")
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(args.threads)

    data_root = Path(args.data_root)
    segmenter = LungSegmenter.from_pretrained(args.weights)
    model_predictor = mask_predictor("segmenter", segmenter)
    rows: dict = {}
    details: dict = {}

    openist = segmentation_pairs("openist", data_root / "lung_seg_openist", "test")
    _run("segmenter, OpenIST test", model_predictor, openist, False, rows, details)
    if not args.no_classical:
        _run("classical, OpenIST test", mask_predictor("classical"), openist, False, rows, details)
    for split in args.covid_splits:
        covid = segmentation_pairs("covid", data_root / "covid_chestxray", split)
        _run(f"segmenter, covid V7 {split}", model_predictor, covid, True, rows, details)
        if not args.no_classical and split == "test":
            _run(f"classical, covid V7 {split}", mask_predictor("classical"), covid, True, rows, details)

    print(format_overlap_table(rows))
    print(
        f"\nweights: {args.weights} ({sum(p.numel() for p in segmenter.parameters()):,} parameters, "
        f"input {segmenter.config.input_size}); torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    for name, detail in details.items():
        print(f"  {name}: {detail['seconds_per_image']:.3f} s/image")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "details": details}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
