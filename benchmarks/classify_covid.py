"""Disease-prediction benchmark on covid_chestxray: encoders x methods x label fractions.

    .venv/bin/python benchmarks/classify_covid.py                       # every encoder found
    .venv/bin/python benchmarks/classify_covid.py --fractions 0.1 --methods linear_probe

Encoders: random initialisation, and each pretrained encoder given with ``--encoder NAME=FOLDER``
(default: the real-data MAE encoders under ``runs/realdata-mae/*/encoder`` that exist). Methods:
VTB (``configs/classify-covid.yaml``: frozen first 5 blocks, the fusion block trained) and the
linear probe (frozen encoder, BatchNorm'd mean-pooled features -> Linear). Fractions: nested,
stratified 1 % / 10 % / 100 % of the frontal training split; seeds 0, 1, 2 (subset, head
initialisation, data order, and the random encoder). Model selection and thresholds use
the validation split only; the test split (64 frontal images: 52 COVID-19, 9 other pneumonia,
3 normal) is scored once per run, with percentile-bootstrap 95 % intervals (1000 resamples).

Prints a Markdown table and writes ``<out>/results.json``; each run's folder holds its model,
``metrics.md`` and heatmaps.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.recipes.classify import ClassifyConfig, run_classification
from cxrfm.utils import configure_logging

log = logging.getLogger("benchmarks.classify_covid")

METHOD_OVERRIDES = {
    "vtb": ["model.kind=vtb"],
    # A linear head on cached features costs ~1 ms a step: train it to convergence.
    "linear_probe": ["model.kind=linear_probe", "train.lr=1e-2", "train.max_steps=1000", "train.validate_every=50", "train.batch_size=32"],
}


def _encoders(given: list[str]) -> dict[str, str | None]:
    encoders: dict[str, str | None] = {"random init": None}
    if given:
        for item in given:
            name, _, folder = item.partition("=")
            encoders[name] = folder
        return encoders
    for folder in sorted(Path("runs/realdata-mae").glob("*-seed0/encoder")):
        encoders[f"real-data MAE ({folder.parent.name})"] = str(folder)
    return encoders


def _cell(entry: dict) -> str:
    value, (low, high) = entry["value"], entry["ci"]
    if value is None:
        return "n/a"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value:.3f}"


def _run(args, out: Path, encoder_name: str, folder: str | None, method: str, fraction: float, seed: int, token_store: dict) -> dict:
    run_dir = out / encoder_name.replace(" ", "_").replace("(", "").replace(")", "") / f"{method}-{fraction:g}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"train.output_dir={run_dir}", f"data.root={args.root}", f"labels.fraction={fraction}",
        f"train.seed={seed}", f"labels.subset_seed={seed}", f"evaluation.bootstrap={args.bootstrap}",
        f"model.encoder_weights={folder if folder else 'null'}", "train.progress_bar=false",
        *METHOD_OVERRIDES[method],
    ]
    config = load_config(ClassifyConfig, resolve_config_path("classify-covid"), overrides)
    started = time.perf_counter()
    result = run_classification(config, token_store=token_store)
    seconds = time.perf_counter() - started
    log.info("%s / %s / %g / seed %d: test mean AUROC %s (%.0f s)", encoder_name, method, fraction, seed,
             _cell(result.test_metrics["mean"]["auroc"]), seconds)
    return {
        "encoder": encoder_name, "encoder_folder": folder, "method": method, "fraction": fraction, "seed": seed,
        "train_images": result.train_images, "best_step": result.best_step, "seconds": round(seconds, 1),
        "val": result.val_metrics, "test": result.test_metrics, "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/covid_chestxray")
    parser.add_argument("--out", default="runs/classify-covid-benchmark")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=FOLDER", help="pretrained encoders (repeatable)")
    parser.add_argument("--methods", nargs="*", default=list(METHOD_OVERRIDES), choices=list(METHOD_OVERRIDES))
    parser.add_argument("--fractions", nargs="*", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="training + subset seeds (a random encoder too)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = []
    started_all = time.perf_counter()
    for encoder_name, folder in _encoders(args.encoder).items():
        for seed in args.seeds:
            token_store: dict = {}  # trunk tokens shared by this encoder's (and seed's) runs
            for method in args.methods:
                for fraction in args.fractions:
                    results.append(_run(args, out, encoder_name, folder, method, fraction, seed, token_store))
    total = time.perf_counter() - started_all
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads, "total_seconds": round(total, 1)}
    (out / "results.json").write_text(json.dumps({"machine": machine, "runs": results}, indent=2) + "\n", encoding="utf-8")
    print(_summary_table(results))  # noqa: T201 - the tables are this script's output
    print()  # noqa: T201
    print(_table(results))  # noqa: T201
    print(f"\n{len(results)} runs in {total / 60:.1f} min ({machine['platform']}, torch {machine['torch']}, {args.threads} threads)")  # noqa: T201
    return 0


def _summary_table(results: list[dict]) -> str:
    """Test mean AUROC over seeds (mean ± sd, range), per encoder x method x fraction."""
    groups: dict[tuple, list[dict]] = {}
    for run in results:
        groups.setdefault((run["encoder"], run["method"], run["fraction"]), []).append(run)
    lines = [
        "| encoder | method | labels | train images | test mean AUROC, mean ± sd over seeds | range | val mean AUROC (mean) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (encoder, method, fraction), runs in groups.items():
        test = [r["test"]["mean"]["auroc"]["value"] for r in runs]
        val = [r["val"]["mean"]["auroc"]["value"] for r in runs]
        sd = statistics.stdev(test) if len(test) > 1 else 0.0
        images = sorted({r["train_images"] for r in runs})
        lines.append(
            f"| {encoder} | {method} | {fraction:.0%} | {'-'.join(map(str, [images[0], images[-1]])) if len(images) > 1 else images[0]} | "
            f"{statistics.mean(test):.3f} ± {sd:.3f} | {min(test):.3f}–{max(test):.3f} | {statistics.mean(val):.3f} | {len(runs)} |"
        )
    return "\n".join(lines)


def _table(results: list[dict]) -> str:
    lines = [
        "| encoder | method | labels | seed | train images | test mean AUROC [95 % CI] | test COVID-19 AUROC | test macro-F1 | test accuracy | val mean AUROC | kept step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results:
        test, val = run["test"], run["val"]
        lines.append(
            f"| {run['encoder']} | {run['method']} | {run['fraction']:.0%} | {run['seed']} | {run['train_images']} | "
            f"{_cell(test['mean']['auroc'])} | {_cell(test['labels']['COVID-19']['auroc'])} | {_cell(test['mean']['f1'])} | "
            f"{_cell(test['mean']['accuracy'])} | {_cell(val['mean']['auroc'])} | {run['best_step']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
