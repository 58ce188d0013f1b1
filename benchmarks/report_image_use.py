"""Does the report generator read the image? R2Gen on phantoms over seeds, beside a VTB ceiling.

    .venv/bin/python benchmarks/report_image_use.py --encoder runs/demo/pretrain/encoder
    .venv/bin/python benchmarks/report_image_use.py --visual-norm none batch --seeds 0 1 2

For each seed and ``model.visual_norm`` setting: ``report-tiny-phantom`` on the given encoder with
``--train`` training / 64 validation / ``--test`` test phantoms for ``--steps`` steps (selection by
validation BLEU-4), then per-finding F1 of the generated test reports against the phantoms' true
findings (the CheXpert-style labeler on the generated text), their macro F1, the swapped-image loss
gap and the number of distinct reports. The reference ceiling: the VTB classifier
(``classify-tiny-phantom``) on the same encoder and the same test phantoms (seeds match), its
per-finding F1 at thresholds chosen on validation and its AUROC.

Prints Markdown tables (mean ± sd over seeds) and writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.evaluation.report import PHANTOM_FINDINGS
from cxrfm.recipes.classify import ClassifyConfig, run_classification
from cxrfm.recipes.report import ReportTrainConfig, run_report_training
from cxrfm.utils import configure_logging

log = logging.getLogger("benchmarks.report_image_use")
FINDINGS = tuple(PHANTOM_FINDINGS)


def report_run(args: argparse.Namespace, seed: int, visual_norm: str) -> dict:
    out = Path(args.out) / f"report-{visual_norm}-seed{seed}"
    overrides = [
        f"model.encoder_dir={args.encoder}", f"model.visual_norm={visual_norm}", f"train.output_dir={out}",
        f"train.max_steps={args.steps}", f"train.seed={seed}", f"data.seed={seed}",
        f"data.num_samples.train={args.train}", "data.num_samples.val=64", f"data.num_samples.test={args.test}",
        f"train.validate_every={max(1, args.steps // 5)}", "evaluation.meteor=false", "train.save_checkpoints=false",
        "train.progress_bar=false", "train.tensorboard=false",
    ]
    result = run_report_training(load_config(ReportTrainConfig, resolve_config_path("report-tiny-phantom"), overrides))
    scores = result.test_scores
    return {
        "finding_f1": {name: scores["findings"]["per_finding"][name]["f1"] for name in FINDINGS},
        "macro_f1": scores["findings"]["macro_f1"],
        "swapped_gap": scores["teacher_forced"]["swapped_gap"],
        "distinct": scores["distinct_reports"],
        "bleu4": scores["nlg"]["BLEU-4"],
        "seconds": round(sum(result.seconds.values()), 1),
    }


def classifier_run(args: argparse.Namespace, seed: int) -> dict:
    out = Path(args.out) / f"vtb-seed{seed}"
    overrides = [
        f"model.encoder_weights={args.encoder}", f"train.output_dir={out}", f"train.seed={seed}", f"data.seed={seed}",
        f"labels.subset_seed={seed}", f"data.num_samples={{train: {args.train}, val: 64, test: {args.test}}}",
        f"labels.names=[{', '.join(FINDINGS)}]", "train.progress_bar=false", "evaluation.heatmap_images=0",
    ]
    result = run_classification(load_config(ClassifyConfig, resolve_config_path("classify-tiny-phantom"), overrides))
    labels = result.test_metrics["labels"]
    return {
        "finding_f1": {name: labels[name]["f1"]["value"] for name in FINDINGS},
        "auroc": {name: labels[name]["auroc"]["value"] for name in FINDINGS},
    }


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(rows: dict[str, list[dict]], ceiling: list[dict]) -> str:
    head = "| model | " + " | ".join(f"F1 {name}" for name in FINDINGS) + " | macro F1 | swapped gap | distinct | BLEU-4 |"
    lines = [head, "|" + "---|" * (len(FINDINGS) + 5)]
    for name, runs in rows.items():
        cells = [mean_sd([run["finding_f1"][f] for run in runs]) for f in FINDINGS]
        cells += [mean_sd([run["macro_f1"] for run in runs]), mean_sd([run["swapped_gap"] for run in runs]),
                  mean_sd([run["distinct"] for run in runs]), mean_sd([run["bleu4"] for run in runs])]
        lines.append(f"| R2Gen, visual_norm {name} | " + " | ".join(cells) + " |")
    if ceiling:
        cells = [mean_sd([run["finding_f1"][f] for run in ceiling]) for f in FINDINGS]
        macro = [statistics.mean(run["finding_f1"][f] for f in FINDINGS) for run in ceiling]
        lines.append("| VTB classifier (ceiling) | " + " | ".join(cells) + f" | {mean_sd(macro)} | – | – | – |")
        cells = [mean_sd([run["auroc"][f] for run in ceiling]) for f in FINDINGS]
        lines.append("| VTB AUROC | " + " | ".join(cells) + " | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="runs/demo/pretrain/encoder", help="a pretrained encoder folder (the main job's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--visual-norm", nargs="+", default=["batch"], choices=("batch", "none"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--train", type=int, default=1024)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--no-ceiling", action="store_true", help="skip the VTB classifier")
    parser.add_argument("--out", default="runs/bench-report-image-use")
    args = parser.parse_args()
    configure_logging(logging.WARNING)
    torch.set_num_threads(1)
    if not Path(args.encoder).is_dir():
        parser.error(f"{args.encoder} is not an encoder folder: run the main job first (bash scripts/demo.sh)")
    started = time.time()
    rows = {norm: [report_run(args, seed, norm) for seed in args.seeds] for norm in args.visual_norm}
    ceiling = [] if args.no_ceiling else [classifier_run(args, seed) for seed in args.seeds]
    text = table(rows, ceiling)
    print(text)  # noqa: T201 - the benchmark's output
    print(f"\nseeds {args.seeds}; {args.steps} steps; {args.train} train / {args.test} test phantoms; "  # noqa: T201
          f"{time.time() - started:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "report": rows, "vtb": ceiling}, indent=2) + "\n")


if __name__ == "__main__":
    main()
