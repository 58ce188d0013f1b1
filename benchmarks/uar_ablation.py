"""UAR ablation on phantoms (the paper's Tab. 2 rows as configs), over seeds, against Base.

    .venv/bin/python benchmarks/uar_ablation.py --dvae runs/bench-dvae/model --encoder runs/demo/pretrain/encoder
    .venv/bin/python benchmarks/uar_ablation.py --rows base uar --seeds 0 1 2 --steps 600

Every row is ``uar-tiny-phantom`` with switches set (``ROWS``): Base (the ViT's features + the
Transformer), +LSU (dVAE tokens), +LSU+CRA (aligner + triplet loss), +TIR in one stage, UAR in two
stages, and our own row: CRA + TIR in two stages on the pretrained (HD-MAE recipe) encoder's
tokens instead of the dVAE's. Each run trains on ``--train`` phantoms for ``--steps`` steps in all
(two-stage rows: half each), selects by validation BLEU-4 and scores ``--test`` held-out phantoms
(the same phantoms for every row of a seed).

Printed: mean ± sd over seeds of BLEU-4, CIDEr, finding macro F1 (our labeler on the generated
text against the phantoms' true findings), alignment score (UAR's, in each model's own feature
space), the swapped-image loss gap and the distinct reports; then the paired bootstrap (resampling
test studies, the same resample for a row and Base, averaged over seeds) 95 % interval of each
row's difference from Base. Writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.evaluation.chexpert_labeler import label_report
from cxrfm.evaluation.nlg import compute_nlg_metrics
from cxrfm.evaluation.report import PHANTOM_FINDINGS
from cxrfm.recipes.report import ReportTrainConfig, build_report_split, run_report_training, true_findings
from cxrfm.utils import configure_logging

log = logging.getLogger("benchmarks.uar_ablation")

ONE_STAGE = "stages=[{{max_steps: {steps}, ce: 1.0, alignment: {alignment}, mask: {mask}, refine: {refine}}}]"
TWO_STAGES = ("stages=[{{max_steps: {half}, ce: 1.0, alignment: 1.0, mask: 0.0, refine: false}}, "
              "{{max_steps: {half}, ce: 1.0, alignment: 1.0, mask: 1.0, refine: true}}]")
ROWS: dict[str, tuple[str, list[str], str]] = {
    # name: (label, switches, stages)
    "base": ("Base (ViT features)", ["model.uar.lsu=false", "model.uar.cra=false", "model.uar.tir=false"],
             ONE_STAGE.replace("{alignment}", "0.0").replace("{mask}", "0.0").replace("{refine}", "false")),
    "lsu": ("+LSU", ["model.uar.lsu=true", "model.uar.cra=false", "model.uar.tir=false"],
            ONE_STAGE.replace("{alignment}", "0.0").replace("{mask}", "0.0").replace("{refine}", "false")),
    "lsu_cra": ("+LSU+CRA (+L_Global)", ["model.uar.lsu=true", "model.uar.cra=true", "model.uar.tir=false"],
                ONE_STAGE.replace("{alignment}", "1.0").replace("{mask}", "0.0").replace("{refine}", "false")),
    "tir_one_stage": ("+LSU+CRA+TIR, one stage", ["model.uar.lsu=true", "model.uar.cra=true", "model.uar.tir=true"],
                      ONE_STAGE.replace("{alignment}", "1.0").replace("{mask}", "1.0").replace("{refine}", "true")),
    "uar": ("UAR (two stages)", ["model.uar.lsu=true", "model.uar.cra=true", "model.uar.tir=true"], TWO_STAGES),
    "hdmae": ("CRA+TIR two stages on the MAE encoder's tokens", ["model.uar.lsu=false", "model.uar.cra=true", "model.uar.tir=true"], TWO_STAGES),
}
FINDINGS = tuple(PHANTOM_FINDINGS)
METRICS = ("BLEU-4", "CIDEr", "macro_f1")


def run_row(args: argparse.Namespace, row: str, seed: int) -> dict:
    label, switches, stages = ROWS[row]
    out = Path(args.out) / f"{row}-seed{seed}"
    overrides = [
        *switches, stages.format(steps=args.steps, half=args.steps // 2),
        f"model.uar.dvae_dir={args.dvae}", f"model.encoder_dir={args.encoder}", f"model.image_size=[{args.size}, {args.size}]",
        f"train.output_dir={out}", f"train.seed={seed}", f"data.seed={seed}",
        f"data.num_samples.train={args.train}", "data.num_samples.val=64", f"data.num_samples.test={args.test}",
        f"train.validate_every={max(1, args.steps // 6)}", "evaluation.meteor=false", "train.save_checkpoints=false",
        "train.progress_bar=false", "train.tensorboard=false",
    ]
    result = run_report_training(load_config(ReportTrainConfig, resolve_config_path("uar-tiny-phantom"), overrides))
    scores = result.test_scores
    rows = [json.loads(line) for line in result.predictions_path.read_text(encoding="utf-8").splitlines()]
    return {
        "row": row, "seed": seed, "BLEU-4": scores["nlg"]["BLEU-4"], "CIDEr": scores["nlg"]["CIDEr"],
        "macro_f1": scores["findings"]["macro_f1"], "alignment": scores.get("alignment_score"),
        "swapped_gap": scores["teacher_forced"].get("swapped_gap"), "distinct": scores["distinct_reports"],
        "predictions": [r["prediction"] for r in rows], "references": [r["reference"] for r in rows],
        "seconds": round(sum(result.seconds.values()), 1),
    }


def test_truth(args: argparse.Namespace, seed: int) -> np.ndarray:
    """``(studies, findings)`` true labels of a seed's test phantoms (the same for every row)."""
    config = load_config(ReportTrainConfig, resolve_config_path("uar-tiny-phantom"), [f"data.seed={seed}", f"data.num_samples.test={args.test}"])
    split = build_report_split(config.data, "test", (32, 32), 1, config.text, "en")
    truth = true_findings(split)
    return np.array([truth[name] for name in FINDINGS]).T == 1


def said_matrix(predictions: list[str]) -> np.ndarray:
    labelled = [label_report(text or "") for text in predictions]
    return np.array([[any(labels.get(o) == 1 for o in PHANTOM_FINDINGS[name]) for name in FINDINGS] for labels in labelled])


def macro_f1(said: np.ndarray, present: np.ndarray) -> float:
    """:func:`~cxrfm.evaluation.report.finding_scores`'s macro F1 on boolean ``(N, F)`` matrices."""
    f1s = []
    for column in range(present.shape[1]):
        s, p = said[:, column], present[:, column]
        if not p.any():
            continue
        hits = (s & p).sum()
        precision = hits / s.sum() if s.any() else 0.0
        recall = hits / p.sum()
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return float(np.mean(f1s)) if f1s else float("nan")


def resample_scores(run: dict, said: np.ndarray, present: np.ndarray, index: np.ndarray) -> dict[str, float]:
    nlg = compute_nlg_metrics([run["predictions"][i] for i in index], [run["references"][i] for i in index], metrics=("BLEU-4", "CIDEr"))
    return {**nlg, "macro_f1": macro_f1(said[index], present[index])}


def paired_bootstrap(runs: dict[str, list[dict]], truths: dict[int, np.ndarray], resamples: int) -> dict[str, dict[str, tuple[float, float]]]:
    """95 % intervals of (row - Base), studies resampled with replacement, the mean over seeds per draw."""
    rng = np.random.default_rng(0)
    said = {(run["row"], run["seed"]): said_matrix(run["predictions"]) for rows in runs.values() for run in rows}
    deltas = {row: {m: [] for m in METRICS} for row in runs if row != "base"}
    for _ in range(resamples):
        per_seed = {row: {m: [] for m in METRICS} for row in deltas}
        for base in runs["base"]:
            seed = base["seed"]
            index = rng.integers(0, len(base["predictions"]), len(base["predictions"]))
            reference = resample_scores(base, said[("base", seed)], truths[seed], index)
            for row in deltas:
                run = next(r for r in runs[row] if r["seed"] == seed)
                scores = resample_scores(run, said[(row, seed)], truths[seed], index)
                for m in METRICS:
                    per_seed[row][m].append(scores[m] - reference[m])
        for row in deltas:
            for m in METRICS:
                deltas[row][m].append(float(np.nanmean(per_seed[row][m])))
    return {row: {m: tuple(np.nanpercentile(values, [2.5, 97.5])) for m, values in metrics.items()} for row, metrics in deltas.items()}


def mean_sd(values) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def tables(runs: dict[str, list[dict]], intervals) -> str:
    lines = ["| row | BLEU-4 | CIDEr | finding macro F1 | alignment score | swapped gap | distinct | s/run |", "|" + "---|" * 8]
    for row, results in runs.items():
        cells = [mean_sd(r[m] for r in results) for m in ("BLEU-4", "CIDEr", "macro_f1", "alignment", "swapped_gap", "distinct")]
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | {statistics.mean(r['seconds'] for r in results):.0f} |")
    if intervals:
        lines += ["", "Paired bootstrap, row − Base (95 % interval; studies resampled, mean over seeds):", "",
                  "| row | Δ BLEU-4 | Δ CIDEr | Δ finding macro F1 |", "|---|---|---|---|"]
        for row, metrics in intervals.items():
            lines.append(f"| {ROWS[row][0]} | " + " | ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in metrics.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dvae", required=True, help="a trained dVAE folder (cxrfm dvae train ... /model)")
    parser.add_argument("--encoder", default="runs/demo/pretrain/encoder", help="a pretrained encoder folder (Base and the MAE row)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--size", type=int, default=112, help="model input size (the dVAE's)")
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--out", default="runs/bench-uar-ablation")
    args = parser.parse_args()
    configure_logging(logging.WARNING)
    torch.set_num_threads(1)
    for folder in (args.dvae, args.encoder):
        if not Path(folder).is_dir():
            parser.error(f"{folder} is not a model folder")
    started = time.time()
    rows = ["base", *[r for r in args.rows if r != "base"]]
    runs = {row: [run_row(args, row, seed) for seed in args.seeds] for row in rows}
    truths = {seed: test_truth(args, seed) for seed in args.seeds}
    intervals = paired_bootstrap(runs, truths, args.resamples) if len(rows) > 1 else {}
    print(tables(runs, intervals))  # noqa: T201 - the benchmark's output
    print(f"\nseeds {args.seeds}; {args.steps} steps; {args.train} train / {args.test} test phantoms at {args.size}; "  # noqa: T201
          f"{time.time() - started:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs, "intervals": intervals}, indent=2) + "\n")


if __name__ == "__main__":
    main()
