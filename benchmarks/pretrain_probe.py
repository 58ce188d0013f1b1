"""Real-data check of HD-MAE pretraining: lung masks for the pretraining images, then a linear probe.

Two steps around ``cxrfm pretrain`` (see ``BENCHMARKS.md``, HD-MAE real-data check):

``masks``: run the lung segmenter once over the pretraining images (OpenIST train + the frontal
COVID-19-collection train images) and write ``<out>/manifest.csv`` + ``<out>/masks/*.png``. The
pretraining run reads that manifest with ``masking.region: given``: the same segmenter masks as
``region: segmenter`` would give, computed once on the whole image (the view the segmenter was
trained and benchmarked on) and cropped along with it, instead of on every augmented crop at
every step (2.7 s per batch of 16 on one CPU core, 5x the MAE step itself). One segmenter for
every source also removes a confound of the datasets' own masks: V7 masks (which include the
retro-cardiac region) exist only for COVID-19 images, so "given" masks would tie the masking
pattern to the label.

    python benchmarks/pretrain_probe.py masks --segmenter runs/segmenter-openist \\
        --out runs/realdata-mae/segmenter-masks

``probe``: frozen encoders -> features of the frontal covid_chestxray images (train / val / test,
patient-level split) -> logistic regression on train, ``C`` chosen by validation macro AUROC, scored
once on test: macro one-vs-rest AUROC over ``label_coarse`` (COVID-19 / other pneumonia / no
finding) and COVID-19-vs-rest AUROC. Runs named ``<arm>-seed<k>`` are grouped into arms (mean ± sd
over seeds); ``--random-init N`` adds N randomly initialised encoders of the same architecture as
the floor. A stratified, paired bootstrap over the test images gives the test-set noise of each
arm-vs-arm difference (seeds averaged inside each resample).

    python benchmarks/pretrain_probe.py probe 'runs/realdata-mae/*/encoder' --image-size 256 \\
        --random-init 3 --json runs/realdata-mae/probe.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrfm.data.registry import DatasetSpec, build_dataset
from cxrfm.models.vit import VisionTransformer
from cxrfm.utils import configure_logging, seed_everything

log = logging.getLogger("benchmarks.pretrain_probe")

FRONTAL_VIEWS = ("PA", "AP", "AP SUPINE")
CLASS_NAMES = ("COVID-19", "Other Pneumonia", "No Finding")  # cxrfm.data.covid.COARSE_LABELS order
C_GRID = tuple(10.0**exponent for exponent in range(-4, 5))
POOLINGS = ("mean", "cls")


# ------------------------------------------------------------------------------------- masks
def write_segmenter_masks(segmenter_dir: Path, data_root: Path, out: Path, threshold: float = 0.5) -> int:
    """Segment every pretraining image; write ``out/masks/<source>/<stem>.png`` and ``out/manifest.csv``.

    The manifest (columns ``image, mask, split, view, patient_id, source``; paths relative to it)
    is a ``kind: manifest`` pretraining source. Returns the number of images.
    """
    from cxrfm.anatomy.segmenter import LungSegmenter
    from cxrfm.io import write_image

    segmenter = LungSegmenter.from_pretrained(segmenter_dir).eval()
    sources = {
        "openist": build_dataset(DatasetSpec(kind="openist", root=str(data_root / "lung_seg_openist")), "train"),
        "covid": build_dataset(
            DatasetSpec(kind="covid", root=str(data_root / "covid_chestxray"), options={"views": FRONTAL_VIEWS, "mask_source": None}), "train"
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for name, dataset in sources.items():
        for index in range(len(dataset)):
            sample = dataset[index]
            mask = segmenter.predict_mask(sample.image[None], threshold=threshold)[0, 0]
            image_path = Path(sample.meta["path"])
            mask_path = out / "masks" / name / f"{image_path.stem}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            write_image(mask_path, mask)
            rows.append(
                {
                    "image": os.path.relpath(image_path.resolve(), out.resolve()),
                    "mask": mask_path.relative_to(out).as_posix(),
                    "split": "train",
                    "view": sample.meta.get("view") or "",
                    "patient_id": sample.meta.get("patient_id") or "",
                    "source": name,
                }
            )
        log.info("%s: %d images segmented", name, len(dataset))
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info("wrote %s (%d rows) in %.0f s", out / "manifest.csv", len(rows), time.perf_counter() - started)
    return len(rows)


# ------------------------------------------------------------------------------------- probe
@dataclass
class ProbeData:
    """Images ``(n, 1, H, W)`` and class indices ``(n,)`` of one split."""

    images: torch.Tensor
    targets: np.ndarray


def load_probe_split(data_root: Path, split: str, image_size: tuple[int, int]) -> ProbeData:
    """The frontal covid_chestxray images of ``split`` at ``image_size`` (padded), coarse labels."""
    options = {"views": FRONTAL_VIEWS, "mask_source": None, "label_set": "coarse"}
    dataset = build_dataset(DatasetSpec(kind="covid", root=str(data_root / "covid_chestxray"), options=options), split, image_size)
    if tuple(dataset.label_names) != CLASS_NAMES:
        raise ValueError(f"unexpected coarse label order {dataset.label_names}")
    samples = [dataset[index] for index in range(len(dataset))]
    images = torch.stack([sample.image for sample in samples])
    targets = np.array([int(torch.argmax(sample.labels)) for sample in samples])
    return ProbeData(images, targets)


@torch.no_grad()
def encoder_features(encoder: VisionTransformer, images: torch.Tensor, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Frozen features of ``images`` ``(n, 1, H, W)``: ``{"mean": (n, D) mean of the patch tokens,
    "cls": (n, D) class token}``, both after the encoder's final norm, no token masked."""
    encoder.eval()
    prefix = encoder.config.num_prefix_tokens
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in POOLINGS}
    for start in range(0, len(images), batch_size):
        tokens = encoder.forward_features(images[start : start + batch_size])  # (b, prefix + N, D)
        pooled["mean"].append(tokens[:, prefix:].mean(dim=1))
        pooled["cls"].append(tokens[:, 0] if prefix else tokens[:, prefix:].mean(dim=1))
    return {name: torch.cat(chunks).numpy() for name, chunks in pooled.items()}


def _fit(features: np.ndarray, targets: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    return model.fit(features, targets)


def probe_scores(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """``macro_auroc`` (one-vs-rest over the 3 classes) and ``covid_auroc`` (COVID-19 vs rest)."""
    from sklearn.metrics import roc_auc_score

    return {
        "macro_auroc": float(roc_auc_score(targets, probabilities, multi_class="ovr", average="macro", labels=range(len(CLASS_NAMES)))),
        "covid_auroc": float(roc_auc_score(targets == 0, probabilities[:, 0])),
    }


def linear_probe(features: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict:
    """Fit on train for each ``C`` in :data:`C_GRID`, keep the best validation macro AUROC, score test once."""
    validation = {}
    for c in C_GRID:
        model = _fit(features["train"], targets["train"], c)
        validation[c] = probe_scores(model.predict_proba(features["val"]), targets["val"])["macro_auroc"]
    best_c = max(C_GRID, key=lambda c: (validation[c], -c))  # ties: the stronger regularisation
    model = _fit(features["train"], targets["train"], best_c)
    test_probabilities = model.predict_proba(features["test"])
    return {"C": best_c, "val_macro_auroc": validation[best_c], "test_probabilities": test_probabilities, **probe_scores(test_probabilities, targets["test"])}


def arm_and_seed(encoder_dir: Path) -> tuple[str, str]:
    """``runs/x/context-seed1/encoder`` -> ``("context", "1")``; other names are their own arm."""
    run_name = encoder_dir.parent.name if encoder_dir.name == "encoder" else encoder_dir.name
    match = re.fullmatch(r"(.+)-seed(\d+)", run_name)
    return (match.group(1), match.group(2)) if match else (run_name, "-")


def expand_encoder_dirs(patterns: list[str]) -> list[Path]:
    directories = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or [pattern]
        directories.extend(Path(match) for match in matches)
    missing = [str(d) for d in directories if not (d / "config.json").is_file()]
    if missing:
        raise SystemExit(f"not encoder folders (no config.json): {', '.join(missing)}")
    return directories


def paired_bootstrap(results: list[dict], targets: np.ndarray, arms: list[str], num_resamples: int, seed: int) -> dict:
    """Test-set noise of each arm's mean AUROC and of arm differences.

    Each resample draws test images with replacement within each class (every class stays present),
    scores every encoder on it and averages the seeds of an arm. Returns, per metric and pooling,
    the 2.5 / 97.5 percentiles of each arm and of ``arm_a - arm_b`` for every pair.
    """
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(targets == k) for k in range(len(CLASS_NAMES))]
    summary: dict = {}
    for pooling in POOLINGS:
        draws: dict[str, dict[str, list[float]]] = {metric: {arm: [] for arm in arms} for metric in ("macro_auroc", "covid_auroc")}
        for _ in range(num_resamples):
            index = np.concatenate([rng.choice(members, size=len(members), replace=True) for members in by_class])
            per_arm: dict[str, dict[str, list[float]]] = {metric: {arm: [] for arm in arms} for metric in draws}
            for row in results:
                scores = probe_scores(row[pooling]["test_probabilities"][index], targets[index])
                for metric in draws:
                    per_arm[metric][row["arm"]].append(scores[metric])
            for metric in draws:
                for arm in arms:
                    draws[metric][arm].append(float(np.mean(per_arm[metric][arm])))
        summary[pooling] = {}
        for metric, values in draws.items():
            intervals = {arm: np.percentile(values[arm], [2.5, 97.5]).tolist() for arm in arms}
            for i, first in enumerate(arms):
                for second in arms[i + 1 :]:
                    difference = np.array(values[first]) - np.array(values[second])
                    intervals[f"{first} - {second}"] = np.percentile(difference, [2.5, 97.5]).tolist()
            summary[pooling][metric] = intervals
    return summary


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def format_tables(results: list[dict], arms: list[str], bootstrap: dict | None) -> str:
    lines = []
    for pooling in POOLINGS:
        lines += [
            f"\nfeatures: {'mean of the patch tokens' if pooling == 'mean' else 'class token'} (test, n = {results[0]['n_test']})",
            "| arm | seeds | macro AUROC mean ± sd | COVID-19-vs-rest AUROC mean ± sd | per seed macro / COVID (C) |",
            "|---|---|---|---|---|",
        ]
        for arm in arms:
            rows = [row for row in results if row["arm"] == arm]
            macro = [row[pooling]["macro_auroc"] for row in rows]
            covid = [row[pooling]["covid_auroc"] for row in rows]
            per_seed = "; ".join(f"s{row['seed']}: {row[pooling]['macro_auroc']:.3f} / {row[pooling]['covid_auroc']:.3f} ({row[pooling]['C']:g})" for row in rows)
            lines.append(f"| {arm} | {len(rows)} | {_mean_sd(macro)} | {_mean_sd(covid)} | {per_seed} |")
        if bootstrap:
            lines += ["", "test-set bootstrap 95% intervals (stratified, paired; seeds averaged):", "| arm or difference | macro AUROC | COVID-19 AUROC |", "|---|---|---|"]
            intervals = bootstrap[pooling]
            for key in intervals["macro_auroc"]:
                low_m, high_m = intervals["macro_auroc"][key]
                low_c, high_c = intervals["covid_auroc"][key]
                lines.append(f"| {key} | [{low_m:+.3f}, {high_m:+.3f}] | [{low_c:+.3f}, {high_c:+.3f}] |")
    return "\n".join(lines)


def run_probe(args: argparse.Namespace) -> int:
    image_size = (args.image_size, args.image_size)
    data_root = Path(args.data_root)
    encoder_dirs = expand_encoder_dirs(args.encoders)
    started = time.perf_counter()
    splits = {split: load_probe_split(data_root, split, image_size) for split in ("train", "val", "test")}
    targets = {split: data.targets for split, data in splits.items()}
    log.info("probe data (frontal): %s images; loaded in %.0f s", {s: len(d.targets) for s, d in splits.items()}, time.perf_counter() - started)

    encoders: list[tuple[str, str, VisionTransformer]] = []
    for directory in encoder_dirs:
        arm, seed = arm_and_seed(directory)
        encoders.append((arm, seed, VisionTransformer.from_pretrained(directory)))
    architecture = encoders[0][2].config
    for seed in range(args.random_init):
        seed_everything(seed)  # the encoder's own init draws from the global RNG
        encoders.append(("random-init", str(seed), VisionTransformer(architecture)))

    results = []
    for arm, seed, encoder in encoders:
        if tuple(encoder.config.image_size) != image_size:
            raise SystemExit(f"{arm} seed {seed}: encoder image size {encoder.config.image_size} != --image-size {image_size}")
        tick = time.perf_counter()
        features = {split: encoder_features(encoder, data.images) for split, data in splits.items()}
        row = {"arm": arm, "seed": seed, "n_test": len(targets["test"])}
        for pooling in POOLINGS:
            row[pooling] = linear_probe({split: f[pooling] for split, f in features.items()}, targets)
        log.info("%s seed %s: macro AUROC %.3f (mean) / %.3f (cls) in %.0f s", arm, seed, row["mean"]["macro_auroc"], row["cls"]["macro_auroc"], time.perf_counter() - tick)
        results.append(row)

    arms = list(dict.fromkeys(row["arm"] for row in results))
    bootstrap = paired_bootstrap(results, targets["test"], arms, args.bootstrap, seed=0) if args.bootstrap else None
    counts = {split: np.bincount(t, minlength=len(CLASS_NAMES)).tolist() for split, t in targets.items()}
    print(f"covid_chestxray frontal images per split [COVID-19, other pneumonia, no finding]: {counts}")
    print(f"logistic regression (standardised features), C from {list(C_GRID)} by validation macro AUROC")
    print(format_tables(results, arms, bootstrap))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; {time.perf_counter() - started:.0f} s")
    if args.json:
        serialisable = [{**row, **{p: {k: v for k, v in row[p].items() if k != "test_probabilities"} for p in POOLINGS}} for row in results]
        Path(args.json).write_text(json.dumps({"counts": counts, "results": serialisable, "bootstrap": bootstrap}, indent=2), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data", help="folder holding lung_seg_openist/ and covid_chestxray/")
    parser.add_argument("--threads", type=int, default=1)
    actions = parser.add_subparsers(dest="action", required=True)
    masks = actions.add_parser("masks", help="segmenter masks + manifest for the pretraining images")
    masks.add_argument("--segmenter", required=True, help="LungSegmenter folder (config.json + model.safetensors)")
    masks.add_argument("--out", required=True)
    probe = actions.add_parser("probe", help="linear probe of frozen encoders on covid_chestxray")
    probe.add_argument("encoders", nargs="+", help="encoder folders or glob patterns (quote them)")
    probe.add_argument("--image-size", type=int, default=256, help="square size the encoders were pretrained at")
    probe.add_argument("--random-init", type=int, default=3, help="randomly initialised encoders (seeds 0..N-1) as the floor")
    probe.add_argument("--bootstrap", type=int, default=1000, help="test-set bootstrap resamples (0: none)")
    probe.add_argument("--json", help="write every score here")
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(args.threads)
    if args.action == "masks":
        write_segmenter_masks(Path(args.segmenter), Path(args.data_root), Path(args.out))
        return 0
    return run_probe(args)


if __name__ == "__main__":
    sys.exit(main())
