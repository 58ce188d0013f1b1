"""``cxrfm demo``: the main job on the embedded default (procedural chest phantoms).

Stages, each writing into the run folder:

1. ``figures/phantoms.png``, ``figures/phantom_hd.png``: phantom radiographs with their lung
   contours and findings (and one at the paper's 1280 x 1280).
2. ``segmenter/``: a lung segmenter trained on phantoms' exact masks; its Dice / IoU on held-out
   phantoms next to the classical fallback's, and ``figures/contours.png`` (contours + the
   per-patch inside/outside grid that drives context-aware masking).
3. ``pretrain/``: a short MAE pretraining with context-aware masking whose chest region comes from
   that segmenter: reconstruction figures (original / masked / reconstruction) and ``encoder/``.
4. ``report/``: an R2Gen-style report generator on that encoder (phantom image-report pairs),
   its NLG and clinical-efficacy metrics and ``figures/report_examples.png``.
5. ``classify/``: a VTB-style classifier of the phantom findings, its AUROC table with bootstrap
   intervals and per-label heatmaps.
6. ``summary.md`` / ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxrfm.cli.common import add_config_arguments
from cxrfm.training.segmentation import SegmenterTrainConfig

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job on procedural phantoms: contours, context-aware MAE pretraining, figures (CPU, minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", default="runs/demo", help="run folder (default runs/demo; runs/demo-1, -2, ... when it already holds a run)"
    )
    add_config_arguments(parser, default_config="demo")
    parser.set_defaults(func=_demo)


@dataclass
class DemoConfig:
    """``configs/demo.yaml``: sizes and counts of each stage, the segmenter's training config, and
    which shipped pretraining config to run (plus overrides)."""

    seed: int = 0
    phantom_size: tuple[int, int] = (256, 256)
    gallery_count: int = 8
    hd_size: tuple[int, int] = (1280, 1280)
    eval_phantoms: int = 16
    patch_size: int = 16
    segmenter: SegmenterTrainConfig = field(default_factory=SegmenterTrainConfig)
    pretrain_config: str = "mae-tiny-phantom"
    pretrain_overrides: list[str] = field(default_factory=list)
    report: bool = True
    report_language: Literal["en", "zh"] = "en"
    report_overrides: list[str] = field(default_factory=list)
    classify: bool = True


def _demo(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config, save_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.utils import make_run_dir

    config = load_config(DemoConfig, resolve_config_path(args.config), args.overrides)
    requested = Path(args.out)
    out = make_run_dir(requested.parent, requested.name)  # never overwrite an earlier run's work
    if out != requested:
        log.info("%s already holds a run; writing to %s", requested, out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    summary: dict = {"run_dir": str(out), "seconds": {}}

    def run_stage(name: str, stage) -> None:
        started = time.time()
        summary[name] = stage()
        summary["seconds"][name] = round(time.time() - started, 1)

    run_stage("phantoms", lambda: _phantom_figures(config, out))
    run_stage("segmentation", lambda: _contour_stage(config, out))
    run_stage("pretraining", lambda: _pretrain_stage(config, out))
    encoder = Path(summary["pretraining"]["encoder"])
    if config.report:
        from cxrfm.training.report_demo import run_report_demo

        run_stage(
            "report",
            lambda: run_report_demo(
                out, encoder, seed=config.seed, language=config.report_language, overrides=config.report_overrides
            ),
        )
    if config.classify:
        from cxrfm.training.classify import run_classify_demo

        run_stage("classification", lambda: run_classify_demo(out / "classify", encoder, seed=config.seed))

    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "summary.md").write_text(_summary_markdown(summary), encoding="utf-8")
    log.info("demo finished in %.0f s; open %s", sum(summary["seconds"].values()), out / "summary.md")
    return 0


def _phantom_figures(config, out: Path) -> dict:
    from cxrfm.data.phantom import DEFAULT_FINDING_PROBS, generate_phantom, save_phantom_gallery

    cases = [
        generate_phantom(seed=config.seed + i, size=config.phantom_size, finding_probs=DEFAULT_FINDING_PROBS)
        for i in range(config.gallery_count)
    ]
    save_phantom_gallery(cases, out / "figures" / "phantoms.png")
    hd_case = generate_phantom(seed=config.seed, size=config.hd_size)
    save_phantom_gallery([hd_case], out / "figures" / "phantom_hd.png")
    log.info("phantom figures written (%d at %s, one at %s)", len(cases), config.phantom_size, config.hd_size)
    return {
        "gallery": "figures/phantoms.png",
        "hd": "figures/phantom_hd.png",
        "findings": [case.positive_findings for case in cases],
    }


def _contour_stage(config, out: Path) -> dict:
    import numpy as np
    import torch

    from cxrfm.anatomy import LungSegmenter, classical_lung_mask, patch_inside_fraction, save_contour_overlays
    from cxrfm.data.phantom import PhantomDataset
    from cxrfm.evaluation.segmentation import dice_score, iou_score
    from cxrfm.training.segmentation import train_segmenter

    seg_config = config.segmenter
    seg_config.output_dir = str(out)
    seg_dir = train_segmenter(seg_config, run_dir=out / seg_config.run_name)
    segmenter = LungSegmenter.from_pretrained(seg_dir).eval()

    # Held-out phantoms: seeds far from the training ones.
    held_out = PhantomDataset(num_samples=config.eval_phantoms, image_size=config.phantom_size, seed=10_000 + config.seed)
    images = torch.stack([sample.image for sample in held_out])
    truth = torch.stack([sample.lung_mask for sample in held_out])
    with torch.no_grad():
        predicted = segmenter.predict_mask(images)
    classical = torch.stack(
        [torch.from_numpy(classical_lung_mask(image[0].numpy())).float()[None] for image in images]
    )
    scores = {}
    for name, masks in (("segmenter", predicted), ("classical", classical)):
        dice, iou = dice_score(masks, truth).ravel(), iou_score(masks, truth).ravel()  # (B,) each
        scores[name] = {"dice_mean": float(np.mean(dice)), "dice_min": float(np.min(dice)), "iou_mean": float(np.mean(iou))}
        log.info("%s on %d held-out phantoms: Dice %.3f, IoU %.3f", name, len(dice), np.mean(dice), np.mean(iou))

    shown = slice(0, min(4, len(images)))
    save_contour_overlays(images[shown], predicted[shown], out / "figures" / "contours.png", patch_size=config.patch_size)
    fractions = patch_inside_fraction(predicted, config.patch_size)
    return {
        "weights": str(seg_dir),
        "held_out_phantoms": config.eval_phantoms,
        "scores": scores,
        "inside_patches_mean": float((fractions >= 0.5).float().sum(dim=1).mean()),
        "num_patches": int(fractions.shape[1]),
        "figure": "figures/contours.png",
    }


def _pretrain_stage(config, out: Path) -> dict:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.training.pretrain import PretrainConfig, run_pretraining

    overrides = [
        f"train.output_dir={out / 'pretrain'}",
        "masking.region=segmenter",
        "masking.cache_regions=true",  # segment each phantom once, not once per step
        f"masking.segmenter_weights={out / config.segmenter.run_name}",
        *config.pretrain_overrides,
    ]
    pretrain_config = load_config(PretrainConfig, resolve_config_path(config.pretrain_config), overrides)
    result = run_pretraining(pretrain_config)
    figures = sorted(str(p.relative_to(out)) for p in (out / "pretrain" / "figures").glob("*.png"))
    return {
        "config": config.pretrain_config,
        "steps": result.step,
        "final_loss": float(result.metrics.get("loss", float("nan"))),
        "encoder": str(result.output_dir / "encoder"),
        "figures": figures,
    }


def _report_markdown(report: dict) -> list[str]:
    nlg = report.get("test_nlg", {})
    clinical = report.get("test_clinical", {})
    lines = [
        "",
        "## Report generation",
        f"R2Gen-style generator ({report['language']}) on the encoder above, trained on phantom image-report pairs "
        f"(vocabulary {report['vocab_size']}, studies {report['studies']}); scored on held-out phantoms:",
        "",
        "| " + " | ".join(nlg) + " |",
        "|" + "---|" * len(nlg),
        "| " + " | ".join(f"{v:.3f}" for v in nlg.values()) + " |",
        "",
    ]
    if clinical:
        lines += [f"Clinical efficacy ({report.get('clinical_convention')}): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in clinical.items()), ""]
    lines += [f"![reports]({report['figure']})"]
    return lines


def _classification_markdown(result: dict, run_dir: Path) -> list[str]:
    low, high = result["test_mean_auroc_ci"]
    lines = [
        "",
        "## Disease prediction",
        f"VTB-style classifier (label-name tokens fused into the last ViT block) on the encoder above, "
        f"{result['train_images']} training phantoms, {result['steps']} steps (best by validation at step {result['best_step']}).",
        "",
        f"Held-out mean AUROC {result['test_mean_auroc']:.3f} (95 % bootstrap CI {low:.3f}-{high:.3f}).",
        "",
        "| finding | AUROC |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.3f} |" for name, value in result["test_auroc"].items()]
    if result.get("heatmaps"):
        lines += ["", f"![heatmaps]({Path(result['heatmaps']).relative_to(run_dir)})"]
    return lines


def _summary_markdown(summary: dict) -> str:
    seg = summary["segmentation"]
    pre = summary["pretraining"]
    lines = [
        "# cxrfm demo",
        "",
        "Everything here ran on procedural chest phantoms (no real data, no GPU).",
        "",
        "## Phantoms",
        f"![phantoms]({summary['phantoms']['gallery']})",
        "",
        f"One at full resolution: `{summary['phantoms']['hd']}`.",
        "",
        "## Chest contour",
        f"Lung segmenter trained on phantoms (`{seg['weights']}`), scored on {seg['held_out_phantoms']} held-out phantoms:",
        "",
        "| method | Dice (mean) | Dice (min) | IoU (mean) |",
        "|---|---|---|---|",
    ]
    for name, s in seg["scores"].items():
        lines.append(f"| {name} | {s['dice_mean']:.3f} | {s['dice_min']:.3f} | {s['iou_mean']:.3f} |")
    lines += [
        "",
        f"On average {seg['inside_patches_mean']:.1f} of {seg['num_patches']} patches are inside the lungs (fraction >= 0.5).",
        "",
        f"![contours]({seg['figure']})",
        "",
        "## Context-aware MAE pretraining",
        f"`{pre['config']}` for {pre['steps']} steps, final loss {pre['final_loss']:.4f}; encoder in `{pre['encoder']}`.",
        "",
    ]
    lines += [f"![reconstruction]({figure})" for figure in pre["figures"][-1:]]
    if "report" in summary:
        lines += _report_markdown(summary["report"])
    if "classification" in summary:
        lines += _classification_markdown(summary["classification"], Path(summary["run_dir"]))
    lines += ["", "## Time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"
