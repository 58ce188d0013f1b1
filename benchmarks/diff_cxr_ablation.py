"""Diff-CXR's Table II ablation on phantoms with planted noise: none, +LNFS, +squeeze, +DKIM, over seeds.

    .venv/bin/python benchmarks/diff_cxr_ablation.py --seeds 0 1 --json runs/bench-diff-cxr-ablation/results.json

Rows (shared/papers/003 Table II; each row adds one component to the one before it):

* ``none``: no LNFS, no information squeeze (``text.squeeze: false``: the 256 MiniLM token states
  condition the U-ViT), no DKIM adapter;
* ``lnfs``: + LNFS (``filter.enabled: true``, the recipe's default filter settings);
* ``squeeze``: + the information squeeze (77 condition tokens, trained with InfoNCE in the text stage);
* ``dkim``: + the DKIM adapter: the full Diff-CXR.

Data. Per seed, ``--train`` phantoms of the training split get ``--fraction`` of their images
corrupted (:class:`cxrfm.data.corruptions.PlantedCorruptions`, the eight kinds dealt out in turn);
a corrupted item keeps its report, so it is a noisy image-report pair. The split is written once,
with clean ``--val`` / ``--test`` phantoms, as a ``manifest`` dataset (``.npy`` float images, which
read back bit-exactly; report text, the 22 phantom labels, ``corruption`` in meta) under
``<out>/data/seed<N>``: every stage of every row then reads it through ``DiffCXRConfig.data`` with no
code of the recipe changed, and the filter's removals are scored against the planted truth.

Training. Every row is the packaged ``diff-cxr-tiny-phantom`` config with the budget below
(``--*-steps``), one torch thread and the row's switches, run by :func:`run_diff_cxr`. What two
rows of one seed would train identically is trained once and copied (the recipe skips a stage whose
model folder is there): the autoencoder (every row), the filter (``lnfs``, ``squeeze``, ``dkim``),
and the text stage and denoiser of ``squeeze`` (which ``dkim`` extends with its adapter). With the
squeeze off the report encoder has no trainable part and the text stage only trains the CLIP image
tower, which no later stage and no metric here uses, so those rows train it for one step.

Scoring. Every row is scored by the recipe's evaluation stage (:func:`run_evaluation_stage`), with
ONE fixed feature network and classifier for all rows and seeds: a VTB classifier trained once on
clean phantoms (``classify-tiny-phantom`` at ``--size``, 8x8 patches) gives mAUC and
controllability, and its ViT trunk (mean-pooled tokens) is the feature space of FD / KID, so the
rows are comparable (the recipe's default, each run's own text-stage tower, is not). Then each
row's test images are generated again exactly as the stage does (same seed, batch and call; the
recomputed FD is checked against the stage's) to keep per-image features, classifier probabilities
and PSNR / SSIM for a paired bootstrap: test images resampled with replacement (the same resample
for a row and ``none``, each seed), the row - none difference averaged over seeds, 95 % intervals.
Controllability gets per-seed differences only.

Printed: mean ± sd over seeds per row (FD, KID, mAUC of the generated images, controllability rate,
PSNR, SSIM, condition tokens, denoiser GFLOPs per forward, seconds of the stages the row trained
itself), the bootstrap intervals, the per-seed differences, the filter's precision / recall against
the planted corruptions and the classifier's mAUC on the real test images (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cxrfm.config import from_dict, read_config_file
from cxrfm.configs import resolve_config_path
from cxrfm.data.corruptions import CORRUPTION_KINDS, PlantedCorruptions
from cxrfm.data.phantom import SPLIT_SEED_OFFSETS, PhantomDataset
from cxrfm.evaluation.image_generation import frechet_distance, kernel_distance, mean_auroc
from cxrfm.evaluation.tokenizer import reconstruction_scores
from cxrfm.models.classify import load_classifier
from cxrfm.pipelines.image_features import ClassifierProbabilities, EncoderFeatures
from cxrfm.pipelines.report_to_image import ReportToImagePipeline
from cxrfm.recipes.classify import ClassifyConfig, run_classification
from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
from cxrfm.recipes.diff_cxr.evaluate import generate
from cxrfm.recipes.diff_cxr.run import run_diff_cxr
from cxrfm.recipes.diff_cxr.stages import load_pairs
from cxrfm.utils import configure_logging

ROWS: dict[str, tuple[str, dict]] = {
    # name: (label, switches)
    "none": ("none", {"filter": False, "squeeze": False, "adapter": False}),
    "lnfs": ("+LNFS", {"filter": True, "squeeze": False, "adapter": False}),
    "squeeze": ("+LNFS +squeeze (AVA-TLS, 77 tokens)", {"filter": True, "squeeze": True, "adapter": False}),
    "dkim": ("+LNFS +squeeze +DKIM (Diff-CXR)", {"filter": True, "squeeze": True, "adapter": True}),
}
# Stages a row copies from an earlier row of the same seed: (source row, stage folders).
SHARED = {"lnfs": ("none", ("autoencoder",)), "squeeze": ("lnfs", ("autoencoder", "filter")),
          "dkim": ("squeeze", ("autoencoder", "filter", "text", "denoiser"))}
METRICS = ("fd", "kid", "mauc", "psnr", "ssim")
DATA_SEED_STRIDE = 10_000  # phantom seeds of benchmark seed s: s * stride + split offset + index
CLASSIFIER_DATA_SEED = 900_000  # the classifier's phantoms: disjoint from every benchmark seed's


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)  # noqa: T201


# ----------------------------------------------------------------------------- data
def write_dataset(args: argparse.Namespace, seed: int) -> tuple[Path, dict]:
    """The seed's manifest folder (train with planted corruptions, clean val / test) and its facts."""
    root = Path(args.out) / "data" / f"seed{seed}"
    facts_path = root / "planted.json"
    settings = {"size": args.size, "train": args.train, "val": args.val, "test": args.test, "fraction": args.fraction, "seed": seed}
    if facts_path.is_file():
        facts = json.loads(facts_path.read_text(encoding="utf-8"))
        if facts["settings"] == settings:
            return root, facts
    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    size = (args.size, args.size)
    base = seed * DATA_SEED_STRIDE
    splits = {
        "train": PlantedCorruptions(PhantomDataset(args.train, size, seed=base + SPLIT_SEED_OFFSETS["train"], split="train"),
                                    args.fraction, CORRUPTION_KINDS, seed=seed),
        "val": PhantomDataset(args.val, size, seed=base + SPLIT_SEED_OFFSETS["val"], split="val"),
        "test": PhantomDataset(args.test, size, seed=base + SPLIT_SEED_OFFSETS["test"], split="test"),
    }
    label_names = list(PhantomDataset.label_names)
    rows, planted = [], {}
    for split, dataset in splits.items():
        for index in range(len(dataset)):
            sample = dataset[index]
            item = f"{split}-{index:05d}"
            np.save(root / "images" / f"{item}.npy", sample.image[0].numpy().astype(np.float32))
            kind = sample.meta.get("corruption")
            if kind:
                planted[item] = kind
            labels = {name: int(value) for name, value in zip(label_names, sample.labels.tolist())}
            rows.append({"image": f"images/{item}.npy", "split": split, "study_id": item, "findings": sample.findings,
                         "impression": sample.impression, "corruption": kind, **labels})
    with (root / "manifest.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    facts = {"settings": settings, "label_names": label_names, "planted": planted,
             "planted_counts": splits["train"].counts()}
    facts_path.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return root, facts


# ----------------------------------------------------------------------------- fixed scorer
def train_scorer(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """ONE classifier for every row and seed (mAUC, controllability) and its ViT trunk (FD / KID)."""
    root = Path(args.out) / "scorer"
    classifier_dir, trunk_dir = root / "classifier" / "model", root / "classifier-trunk"
    summary_path = root / "summary.json"
    if args.classifier:
        classifier_dir = Path(args.classifier)
    elif not (classifier_dir / "config.json").is_file():
        data = read_config_file(resolve_config_path("classify-tiny-phantom"))
        data["model"].update(image_size=[args.size, args.size], encoder_overrides={"patch_size": [8, 8]})
        data["data"].update(seed=CLASSIFIER_DATA_SEED, num_samples={"train": args.classifier_train, "val": 96, "test": 96})
        data["evaluation"].update(bootstrap=200, heatmap_images=0)
        data["train"].update(output_dir=str(root / "classifier"), max_steps=args.classifier_steps, num_threads=1,
                             validate_every=max(1, args.classifier_steps // 6), progress_bar=False, log_every=10_000)
        started = time.time()
        result = run_classification(from_dict(ClassifyConfig, data, source="classify-tiny-phantom + benchmark"))
        summary = {"seconds": round(time.time() - started, 1), "labels": list(result.label_names), "best_step": result.best_step,
                   "val_mean_auroc": _mean_auroc_of(result.val_metrics), "test_mean_auroc": _mean_auroc_of(result.test_metrics)}
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        classifier_dir = result.model_dir
    if not (trunk_dir / "config.json").is_file() or args.classifier:
        load_classifier(classifier_dir).encoder.save_pretrained(trunk_dir)
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() and not args.classifier else {}
    return classifier_dir, trunk_dir, summary


def _mean_auroc_of(metrics: dict | None) -> float | None:
    """The mean AUROC of a classification ``MetricSummary.to_dict()``."""
    value = ((metrics or {}).get("mean") or {}).get("auroc", {}).get("value")
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- one row
def row_config(args: argparse.Namespace, row: str, seed: int, data_root: Path, label_names: list[str], classifier_dir: Path,
               trunk_dir: Path) -> DiffCXRConfig:
    switches = ROWS[row][1]
    data = read_config_file(resolve_config_path("diff-cxr-tiny-phantom"))
    data.update(output_dir=str(Path(args.out) / f"seed{seed}" / row), seed=seed, image_size=args.size,
                data=[{"kind": "manifest", "root": str(data_root), "cache": True, "options": {"label_columns": label_names}}])
    quiet = {"num_threads": 1, "progress_bar": False, "log_every": 100_000, "validate_every": 0}
    data["autoencoder"]["train"].update(max_steps=args.autoencoder_steps, warmup_steps=min(20, args.autoencoder_steps // 5), **quiet)
    data["autoencoder"]["eval_max_images"] = args.test
    text_steps = args.text_steps if switches["squeeze"] else 1  # squeeze off: only the unused image tower would learn
    data["text"]["train"].update(max_steps=text_steps, warmup_steps=min(15, text_steps // 5), **quiet)
    data["text"]["squeeze"] = switches["squeeze"]
    data["denoiser"]["train"].update(max_steps=args.denoiser_steps, warmup_steps=min(30, args.denoiser_steps // 10), **quiet)
    data["adapter"]["train"].update(max_steps=args.adapter_steps, warmup_steps=min(20, args.adapter_steps // 10), **quiet)
    data["adapter"]["enabled"] = switches["adapter"]
    data["filter"] = {**data.get("filter", {}), "enabled": switches["filter"], "seed": seed}
    data["sampling"].update(num_inference_steps=args.sample_steps, batch_size=args.test, seed=seed)
    data["evaluation"].update(classifier_dir=str(classifier_dir), feature_encoder_dir=str(trunk_dir), max_images=args.test)
    return from_dict(DiffCXRConfig, data, source=f"diff-cxr-tiny-phantom + benchmark row {row}")


def share_stages(args: argparse.Namespace, row: str, seed: int) -> list[str]:
    """Copy the stage folders this row shares with an earlier row of the seed (when not there yet)."""
    if row not in SHARED:
        return []
    source_row, stages = SHARED[row]
    source, target = Path(args.out) / f"seed{seed}" / source_row, Path(args.out) / f"seed{seed}" / row
    copied = []
    for stage in stages:
        if not (source / stage).is_dir():
            raise RuntimeError(f"{source / stage} is missing: row {row} shares it with row {source_row}; run that row first")
        if not (target / stage).is_dir():
            shutil.copytree(source / stage, target / stage)
        copied.append(f"{stage} <- {source_row}")
    return copied


@torch.no_grad()
def per_image_scores(config: DiffCXRConfig, metrics: dict, extractor: EncoderFeatures, classifier: ClassifierProbabilities,
                     real_features: np.ndarray) -> dict:
    """The test images generated again as the evaluation stage does, scored per image."""
    pipe = ReportToImagePipeline.from_pretrained(config.output_dir, sampler=config.sampling.sampler)
    pairs = load_pairs(config, "test")
    pairs = pairs.subset(list(range(min(len(pairs.ids), config.evaluation.max_images))))
    generated = generate(pipe, pairs.reports, config, progress=False)
    features = extractor(generated)
    fd = frechet_distance(real_features, features)
    if not math.isclose(fd, metrics["fd"], rel_tol=1e-6, abs_tol=1e-9):
        raise RuntimeError(f"{config.output_dir}: regenerated FD {fd} != the evaluation stage's {metrics['fd']}: generation is not repeatable")
    pixel = reconstruction_scores(pairs.images[:, 0].numpy(), generated[:, 0].numpy())
    return {"features": features, "probabilities": classifier(generated), "psnr": np.array(pixel["psnr"]), "ssim": np.array(pixel["ssim"])}


def run_row(args: argparse.Namespace, row: str, seed: int, config: DiffCXRConfig) -> dict:
    copied = share_stages(args, row, seed)
    started = time.time()
    summary = run_diff_cxr(config)
    wall = time.time() - started
    metrics = summary["evaluation"]["result"]
    own = {stage: entry["seconds"] for stage, entry in summary.items()
           if not any(item.startswith(f"{stage} <-") for item in copied)}
    mauc = metrics.get("mauc", {})
    control = metrics.get("controllability", {})
    result = {
        "row": row, "seed": seed, "fd": metrics["fd"], "kid": metrics["kid"], "kid_sd_within_run": metrics["kid_sd"],
        "mauc": mauc.get("generated", {}).get("mean", math.nan), "mauc_real": mauc.get("real", {}).get("mean", math.nan),
        "mauc_per_label": mauc.get("generated", {}).get("per_label"),
        "controllability": control.get("rate", math.nan), "controllability_pairs": control.get("pairs"),
        "controllability_mean_shift": control.get("mean_shift"),
        "psnr": metrics["psnr"], "ssim": metrics["ssim"], "feature_space": metrics["feature_space"],
        "condition_tokens": config.text.condition_tokens if config.text.squeeze else 256,
        "denoiser_gflops_per_forward": metrics["denoiser_gflops_per_forward"],
        "sampling_seconds_per_image": metrics["sampling"]["seconds_per_image"],
        "stage_seconds": own, "copied": copied, "wall_seconds": round(wall, 1),
        "filter": summary.get("filter", {}).get("result"),
    }
    progress(f"seed {seed} {row}: FD {result['fd']:.3g}, KID {result['kid']:.3g}, mAUC {result['mauc']:.3f}, "
             f"controllability {result['controllability']:.2f}, PSNR {result['psnr']:.2f}, SSIM {result['ssim']:.3f} ({wall:.0f} s)")
    return result


def filter_scores(args: argparse.Namespace, seed: int, facts: dict) -> dict | None:
    """LNFS's removals (the seed's ``lnfs`` row) against the planted corruptions."""
    removed_file = Path(args.out) / f"seed{seed}" / "lnfs" / "filter" / "removed.txt"
    if not removed_file.is_file():
        return None
    removed = set(removed_file.read_text(encoding="utf-8").split())
    planted = facts["planted"]
    hits = len(removed & set(planted))
    per_kind = {kind: f"{sum(1 for item, k in planted.items() if k == kind and item in removed)}/{sum(1 for k in planted.values() if k == kind)}"
                for kind in CORRUPTION_KINDS}
    return {"train": args.train, "planted": len(planted), "removed": len(removed), "removed_planted": hits,
            "precision": hits / len(removed) if removed else math.nan, "recall": hits / len(planted) if planted else math.nan,
            "clean_removed": len(removed) - hits, "per_kind": per_kind}


# ----------------------------------------------------------------------------- statistics
def resample_metrics(item: dict, real: np.ndarray, labels: np.ndarray, names: tuple[str, ...], index: np.ndarray) -> dict:
    fake = item["features"][index]
    kid, _ = kernel_distance(real[index], fake, num_subsets=1, subset_size=len(index), seed=0)
    return {"fd": frechet_distance(real[index], fake), "kid": kid,
            "mauc": mean_auroc(item["probabilities"][index], labels[index], names)["mean"],
            "psnr": float(np.mean(item["psnr"][index])), "ssim": float(np.mean(item["ssim"][index]))}


def paired_bootstrap(items: dict, truths: dict, rows: list[str], resamples: int) -> dict:
    """95 % intervals of (row - none): test images resampled (the same draw for both, per seed), mean over seeds."""
    rng = np.random.default_rng(0)
    deltas = {row: {m: [] for m in METRICS} for row in rows if row != "none"}
    for _ in range(resamples):
        per_seed = {row: {m: [] for m in METRICS} for row in deltas}
        for seed, (real, labels, names) in truths.items():
            index = rng.integers(0, len(real), len(real))
            reference = resample_metrics(items[("none", seed)], real, labels, names, index)
            for row in deltas:
                scores = resample_metrics(items[(row, seed)], real, labels, names, index)
                for m in METRICS:
                    per_seed[row][m].append(scores[m] - reference[m])
        for row in deltas:
            for m in METRICS:
                deltas[row][m].append(float(np.nanmean(per_seed[row][m])))
    return {row: {m: [float(v) for v in np.nanpercentile(values, [2.5, 97.5])] for m, values in metrics.items()}
            for row, metrics in deltas.items()}


def mean_sd(values, digits: int = 3) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def tables(runs: dict[str, list[dict]], intervals: dict, filters: list[dict], scorer: dict) -> str:
    lines = [("| row | FD (classifier trunk) | KID | mAUC (generated) | controllability | PSNR | SSIM | condition tokens | "
              "GFLOPs/forward | s/run (own stages) |"), "|" + "---|" * 10]
    for row, results in runs.items():
        cells = [mean_sd([r["fd"] for r in results]), mean_sd([r["kid"] for r in results], 4), mean_sd([r["mauc"] for r in results]),
                 mean_sd([r["controllability"] for r in results], 2), mean_sd([r["psnr"] for r in results], 2),
                 mean_sd([r["ssim"] for r in results]), str(results[0]["condition_tokens"]),
                 f"{results[0]['denoiser_gflops_per_forward']:.4f}",
                 f"{statistics.mean(sum(r['stage_seconds'].values()) for r in results):.0f}"]
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + " |")
    if intervals:
        lines += ["", "Paired bootstrap, row − none (95 % interval; test images resampled, the same draw for both rows, mean over seeds):", "",
                  "| row | Δ FD | Δ KID | Δ mAUC | Δ PSNR | Δ SSIM |", "|---|---|---|---|---|---|"]
        for row, metrics in intervals.items():
            digits = {"kid": 4, "psnr": 2}
            lines.append(f"| {ROWS[row][0]} | " + " | ".join(
                f"[{lo:+.{digits.get(m, 3)}f}, {hi:+.{digits.get(m, 3)}f}]" for m, (lo, hi) in metrics.items()) + " |")
    if len(runs) > 1:
        seeds = [r["seed"] for r in runs["none"]]
        lines += ["", "Per-seed differences, row − none (seed " + " / ".join(map(str, seeds)) + "):", "",
                  "| row | Δ FD | Δ KID | Δ mAUC | Δ controllability | Δ PSNR | Δ SSIM |", "|---|---|---|---|---|---|---|"]
        base = {r["seed"]: r for r in runs["none"]}
        for row, results in runs.items():
            if row == "none":
                continue
            cells = []
            for metric, digits in (("fd", 3), ("kid", 4), ("mauc", 3), ("controllability", 2), ("psnr", 2), ("ssim", 3)):
                cells.append(" / ".join(f"{r[metric] - base[r['seed']][metric]:+.{digits}f}" for r in results))
            lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + " |")
    if filters:
        lines += ["", "LNFS against the planted corruptions (per seed):", "",
                  "| seed | planted | removed | precision | recall | clean removed | recall per kind (removed/planted) |", "|---|---|---|---|---|---|---|"]
        for seed, f in filters:
            kinds = ", ".join(f"{kind} {value}" for kind, value in f["per_kind"].items())
            lines.append(f"| {seed} | {f['planted']} / {f['train']} | {f['removed']} | {f['precision']:.2f} | {f['recall']:.2f} | "
                         f"{f['clean_removed']} | {kinds} |")
    real = [r["mauc_real"] for results in runs.values() for r in results if r["row"] == "none"]
    lines += ["", f"Fixed scorer: classifier mAUC on the real test images {mean_sd(real)} (the ceiling of the generated mAUC)"
              + (f"; its own test mAUC {scorer['test_mean_auroc']:.3f} after {scorer['seconds']:.0f} s of training" if scorer.get("test_mean_auroc") else "")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="none is always run (the reference)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", type=int, default=64, help="image side (latents 4 x size/8 x size/8)")
    parser.add_argument("--train", type=int, default=384, help="training phantoms (before planting)")
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--test", type=int, default=96, help="test phantoms: every one is generated and scored")
    parser.add_argument("--fraction", type=float, default=0.075, help="share of training images corrupted")
    parser.add_argument("--autoencoder-steps", type=int, default=100)
    parser.add_argument("--text-steps", type=int, default=100, help="text stage steps of the squeeze rows")
    parser.add_argument("--denoiser-steps", type=int, default=300)
    parser.add_argument("--adapter-steps", type=int, default=150)
    parser.add_argument("--sample-steps", type=int, default=20, help="DPM-Solver++ steps at evaluation")
    parser.add_argument("--classifier", default=None, help="a trained cxrfm classifier folder to score with (default: train one)")
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--classifier-train", type=int, default=320)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--force", action="store_true", help="delete and retrain the row folders (default: complete stages are kept)")
    parser.add_argument("--out", default="runs/bench-diff-cxr-ablation")
    parser.add_argument("--json", default=None, help="also write the settings and every run here (default: <out>/results.json)")
    args = parser.parse_args()
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    if not 0 < args.fraction < 1:
        parser.error("--fraction must be in (0, 1)")
    configure_logging(logging.WARNING)
    logging.getLogger("cxrfm.recipes.diff_cxr").setLevel(logging.INFO)
    torch.set_num_threads(1)
    started = time.time()
    rows = [row for row in ROWS if row == "none" or row in args.rows]
    for row in rows:  # a row copies stages of the row before it
        if row in SHARED and SHARED[row][0] not in rows:
            parser.error(f"row {row} shares stages with row {SHARED[row][0]}: include it in --rows")
    classifier_dir, trunk_dir, scorer = train_scorer(args)
    progress(f"scorer: {classifier_dir} (trunk {trunk_dir}) {scorer}")
    extractor = EncoderFeatures.from_pretrained(trunk_dir, device="cpu")
    classifier = ClassifierProbabilities.from_pretrained(classifier_dir, device="cpu")
    runs = {row: [] for row in rows}
    items, truths, filters = {}, {}, []
    for seed in args.seeds:
        if args.force:  # the benchmark's own row folders: copied stages would otherwise be retrained in place
            for row in rows:
                shutil.rmtree(Path(args.out) / f"seed{seed}" / row, ignore_errors=True)
        data_root, facts = write_dataset(args, seed)
        progress(f"seed {seed}: data in {data_root} ({len(facts['planted'])} planted: {facts['planted_counts']})")
        for row in rows:
            config = row_config(args, row, seed, data_root, facts["label_names"], classifier_dir, trunk_dir)
            result = run_row(args, row, seed, config)
            runs[row].append(result)
            if seed not in truths:
                pairs = load_pairs(config, "test")
                pairs = pairs.subset(list(range(min(len(pairs.ids), config.evaluation.max_images))))
                position = {name: i for i, name in enumerate(pairs.label_names)}
                shared = [(column, position[name]) for column, name in enumerate(classifier.label_names) if name in position]
                names = tuple(classifier.label_names[column] for column, _ in shared)
                truths[seed] = (extractor(pairs.images), pairs.labels[:, [p for _, p in shared]].numpy(), names)
            scores = per_image_scores(config, result, extractor, classifier, truths[seed][0])
            scores["probabilities"] = scores["probabilities"][:, [classifier.label_names.index(n) for n in truths[seed][2]]]
            items[(row, seed)] = scores
        found = filter_scores(args, seed, facts)
        if found:
            filters.append((seed, found))
    for logger in ("cxrfm.evaluation.image_generation",):  # the bootstrap's duplicated rows make covariances singular
        logging.getLogger(logger).setLevel(logging.ERROR)
    intervals = paired_bootstrap(items, truths, rows, args.resamples) if len(rows) > 1 else {}
    print(tables(runs, intervals, filters, scorer))  # noqa: T201 - the benchmark's output
    budget = (f"{args.train} train phantoms ({100 * args.fraction:g} % corrupted) / {args.val} val / {args.test} test at {args.size}²; "
              f"steps: autoencoder {args.autoencoder_steps}, text {args.text_steps} (squeeze rows; 1 otherwise), denoiser "
              f"{args.denoiser_steps}, adapter {args.adapter_steps}; DPM-Solver++ {args.sample_steps} steps, guidance 3; "
              f"classifier {args.classifier_steps} steps")
    total = time.time() - started
    print(f"\nseeds {args.seeds}; {budget}; {total:.0f} s in all (1 torch thread) on "  # noqa: T201
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    out = Path(args.json) if args.json else Path(args.out) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "budget": budget, "seconds": round(total, 1), "scorer": scorer,
                               "runs": runs, "intervals": intervals, "filters": dict(filters)}, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
