"""The main job (``cxrfm demo``) on the embedded default (procedural chest phantoms): a recipe of recipes.

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
5. ``dvae/`` + ``uar/``: UAR's image tokenizer (a discrete VAE) and a two-stage UAR report
   generator on its tokens, with its NLG, finding F1 and alignment score.
6. ``classify/``: a VTB-style classifier of the phantom findings, its AUROC table with bootstrap
   intervals and per-label heatmaps.
7. ``diffusion/``: Diff-CXR report -> image (autoencoder, squeeze, U-ViT, DKIM) on phantom pairs,
   scored by that classifier (mAUC, controllability) and FD/KID, with example and guidance figures.
8. ``summary.md`` / ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cxrfm.anatomy.classical import classical_lung_mask
from cxrfm.config import load_config, save_config
from cxrfm.configs import resolve_config_path
from cxrfm.data.phantom import DEFAULT_FINDING_PROBS, PhantomDataset, generate_phantom
from cxrfm.evaluation.segmentation import dice_score, iou_score
from cxrfm.figures.contours import save_contour_overlays
from cxrfm.figures.phantom import save_phantom_gallery
from cxrfm.figures.reports import save_report_examples
from cxrfm.pipelines.lung_masks import LungMaskPipeline
from cxrfm.recipes.classify import ClassifyConfig, run_classification
from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
from cxrfm.recipes.diff_cxr.run import run_diff_cxr
from cxrfm.recipes.dvae import DVAETrainConfig, run_dvae_training
from cxrfm.recipes.pretrain import PretrainConfig, run_pretraining
from cxrfm.recipes.report import (
    ReportTrainConfig,
    build_report_split,
    run_report_training,
)
from cxrfm.recipes.segmenter import SegmenterTrainConfig, train_segmenter
from cxrfm.utils.patch_grid import patch_inside_fraction

log = logging.getLogger(__name__)


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
    uar: bool = True
    uar_overrides: list[str] = field(default_factory=list)
    dvae_overrides: list[str] = field(default_factory=list)
    classify: bool = True
    diffusion: bool = True
    diffusion_overrides: list[str] = field(default_factory=list)


def run_demo(config: DemoConfig, out: Path) -> dict:
    """Run every stage into the (new, empty) run folder ``out``; returns the summary (also written
    as ``summary.json`` / ``summary.md``)."""
    out = Path(out)
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
        run_stage(
            "report",
            lambda: run_report_demo(
                out, encoder, seed=config.seed, language=config.report_language, overrides=config.report_overrides
            ),
        )
    if config.uar:
        run_stage("uar", lambda: run_uar_demo(out, seed=config.seed, overrides=config.uar_overrides, dvae_overrides=config.dvae_overrides))
    if config.classify:
        run_stage("classification", lambda: run_classify_demo(out / "classify", encoder, seed=config.seed))
    if config.diffusion:
        classifier = Path(summary["classification"]["model"]) if config.classify else None
        run_stage("diffusion", lambda: run_diffusion_demo(out / "diffusion", classifier, encoder, seed=config.seed,
                                                          overrides=config.diffusion_overrides))

    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "summary.md").write_text(_summary_markdown(summary), encoding="utf-8")
    log.info("demo finished in %.0f s; open %s", sum(summary["seconds"].values()), out / "summary.md")
    return summary


def _phantom_figures(config, out: Path) -> dict:
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
    seg_config = config.segmenter
    seg_config.output_dir = str(out)
    seg_dir = train_segmenter(seg_config, run_dir=out / seg_config.run_name)
    segmenter = LungMaskPipeline.from_pretrained(seg_dir, device="cpu")

    # Held-out phantoms: seeds far from the training ones.
    held_out = PhantomDataset(num_samples=config.eval_phantoms, image_size=config.phantom_size, seed=10_000 + config.seed)
    images = torch.stack([sample.image for sample in held_out])
    truth = torch.stack([sample.lung_mask for sample in held_out])
    predicted = segmenter(images)
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
    if report.get("finding_f1"):
        lines += ["Findings of the generated reports against each phantom's true findings (F1): "
                  + ", ".join(f"{name} {value:.2f}" for name, value in report["finding_f1"].items())
                  + f"; macro F1 {report['finding_macro_f1']:.3f}.", ""]
    forced = report.get("teacher_forced", {})
    if "swapped_gap" in forced:
        lines += [f"Does it read the image? Test loss with each study's own image {forced['loss']:.4f}, with another "
                  f"study's image {forced['loss_swapped_images']:.4f} ({forced['swapped_gap']:+.1%}); "
                  f"{report['distinct_predictions']} distinct reports for {report['studies'].get('test', '?')} studies.", ""]
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
    if "uar" in summary:
        lines += _uar_markdown(summary["uar"])
    if "classification" in summary:
        lines += _classification_markdown(summary["classification"], Path(summary["run_dir"]))
    if "diffusion" in summary:
        lines += _diffusion_markdown(summary["diffusion"], Path(summary["run_dir"]))
    lines += ["", "## Time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- report stage
REPORT_CONFIG = "report-tiny-phantom"


def report_overrides(run_dir: Path, encoder_dir: Path | None, seed: int, language: str) -> list[str]:
    """``--set`` overrides that point the shipped config at the demo's run folder and encoder."""
    overrides = [
        f"train.output_dir={Path(run_dir) / 'report'}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        f"tokenizer.language={language}",
        "train.save_checkpoints=false",
        "train.tensorboard=false",
        "train.progress_bar=false",
    ]
    if encoder_dir is not None:
        overrides.append(f"model.encoder_dir={encoder_dir}")
    return overrides


def run_report_demo(run_dir: Path, encoder_dir: Path | None, seed: int = 0, language: str = "en", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train and score a report generator on phantoms; returns a JSON-ready summary.

    Writes ``<run_dir>/report/`` (model, metrics, predictions) and
    ``<run_dir>/figures/report_examples.png``. ``encoder_dir``: the pretraining stage's encoder
    (None: a random ViT). ``overrides``: further ``--set`` style changes to the config.
    """
    run_dir = Path(run_dir)
    config = load_config(ReportTrainConfig, resolve_config_path(REPORT_CONFIG), [*report_overrides(run_dir, encoder_dir, seed, language), *overrides])
    result = run_report_training(config)
    rows = [json.loads(line) for line in result.predictions_path.read_text(encoding="utf-8").splitlines()]
    size = tuple(config.model.image_size) if config.model.image_size else None
    test_split = build_report_split(config.data, "test", size or _encoder_size(result.model_dir), 1, config.text, language)
    shown = min(4, len(rows))
    images = [test_split[i].image for i in range(shown)]
    figure = save_report_examples(images, rows[:shown], run_dir / "figures" / "report_examples.png")
    scores = result.test_scores or {}
    return {
        "model": str(result.model_dir),
        "encoder": None if encoder_dir is None else str(encoder_dir),
        "language": language,
        "vocab_size": result.vocab_size,
        "studies": result.split_sizes,
        "selected": None if result.train.best is None else {k: v for k, v in result.train.best.items() if k != "path"},
        "test_nlg": scores.get("nlg", {}),
        "test_clinical": {k: v for k, v in scores.get("clinical", {}).items() if isinstance(v, float)},
        "clinical_convention": scores.get("clinical_convention"),
        "teacher_forced": scores.get("teacher_forced", {}),
        "distinct_predictions": len({row["prediction"] for row in rows}),
        "finding_macro_f1": scores.get("findings", {}).get("macro_f1"),
        "finding_f1": {name: entry["f1"] for name, entry in scores.get("findings", {}).get("per_finding", {}).items()},
        "figure": str(figure.relative_to(run_dir)),
        "metrics": str(result.output_dir / "metrics_test.json"),
        "seconds": {name: round(value, 1) for name, value in result.seconds.items()},
    }


def _encoder_size(model_dir: Path) -> tuple[int, int]:
    record = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return tuple(record["encoder"]["image_size"])


# ---------------------------------------------------------------------------------- UAR stage
DVAE_CONFIG, UAR_CONFIG = "dvae-tiny-phantom", "uar-tiny-phantom"


def run_uar_demo(run_dir: Path, seed: int = 0, overrides: Sequence[str] = (), dvae_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """UAR on phantoms: the dVAE tokenizer (``<run_dir>/dvae``), then two-stage UAR on its tokens
    (``<run_dir>/uar``). ``overrides`` / ``dvae_overrides`` go to the UAR / dVAE configs."""
    run_dir = Path(run_dir)
    common = [f"train.seed={seed}", "train.tensorboard=false", "train.progress_bar=false"]
    dvae_config = load_config(DVAETrainConfig, resolve_config_path(DVAE_CONFIG), [*common, f"train.output_dir={run_dir / 'dvae'}", *dvae_overrides])
    tokenizer = run_dvae_training(dvae_config)
    uar_settings = [
        *common, f"train.output_dir={run_dir / 'uar'}", f"data.seed={seed}", "train.save_checkpoints=false",
        f"model.uar.dvae_dir={run_dir / 'dvae' / 'model'}", *overrides,
    ]
    result = run_report_training(load_config(ReportTrainConfig, resolve_config_path(UAR_CONFIG), uar_settings))
    scores = result.test_scores or {}
    phantom = tokenizer["per_dataset"]["phantom"]
    return {
        "model": str(result.model_dir),
        "tokenizer": {"psnr": phantom["psnr_mean"], "ssim": phantom["ssim_mean"], **tokenizer["codebook"],
                      "figure": str(Path(tokenizer["figure"]).relative_to(run_dir))},
        "test_nlg": scores.get("nlg", {}),
        "finding_macro_f1": scores.get("findings", {}).get("macro_f1"),
        "alignment_score": scores.get("alignment_score"),
        "teacher_forced": scores.get("teacher_forced", {}),
        "distinct_predictions": scores.get("distinct_reports"),
        "studies": result.split_sizes,
        "seconds": {name: round(value, 1) for name, value in result.seconds.items()},
    }


def _uar_markdown(uar: dict) -> list[str]:
    tokenizer, nlg, forced = uar["tokenizer"], uar["test_nlg"], uar["teacher_forced"]
    return [
        "",
        "## UAR report generation",
        f"Image tokenizer (discrete VAE, codebook {tokenizer['used_codes'] + tokenizer['dead_codes']}): held-out phantoms "
        f"reconstructed from their tokens at PSNR {tokenizer['psnr']:.1f} dB, SSIM {tokenizer['ssim']:.3f}; codebook "
        f"perplexity {tokenizer['perplexity']:.1f}, {tokenizer['dead_codes']} dead codes.",
        "",
        f"![tokenizer]({tokenizer['figure']})",
        "",
        "UAR (dVAE tokens, CRA + triplet loss, then TIR's mask in a second stage) on phantom pairs: "
        + ", ".join(f"{k} {v:.3f}" for k, v in nlg.items())
        + f"; finding macro F1 {uar['finding_macro_f1']:.3f}; alignment score {uar['alignment_score']:.3f}; "
        f"swapped-image gap {forced.get('swapped_gap', float('nan')):+.1%}; {uar['distinct_predictions']} distinct reports "
        f"for {uar['studies'].get('test', '?')} studies.",
    ]


# ----------------------------------------------------------------------- classification stage
def run_classify_demo(run_dir: Path, encoder_dir: Path | None, seed: int = 0, overrides: Sequence[str] = ()) -> dict:
    """The main job's classification stage: VTB on phantom findings (about 30 s on 2 CPU cores).

    Trains with ``configs/classify-tiny-phantom.yaml`` into ``run_dir`` (from ``encoder_dir``, a
    pretrained encoder folder whose image size the config resizes to 128 x 128, or a random
    encoder when None), writes ``metrics.md`` (validation and test AUROC / F1 / accuracy tables
    with bootstrap CIs) and ``figures/heatmaps.png``, and returns a summary. ``overrides`` are
    extra ``--set`` style overrides (tests use them to shrink the run).
    """
    run_dir = Path(run_dir)
    settings = [f"train.output_dir={run_dir}", f"train.seed={seed}", f"labels.subset_seed={seed}", "train.progress_bar=false"]
    if encoder_dir is not None:
        settings.append(f"model.encoder_weights={encoder_dir}")
    config = load_config(ClassifyConfig, resolve_config_path("classify-tiny-phantom"), [*settings, *overrides])
    result = run_classification(config)
    test = result.test_metrics or result.val_metrics
    return {
        "encoder": str(encoder_dir) if encoder_dir is not None else "random init",
        "labels": list(result.label_names),
        "train_images": result.train_images,
        "steps": result.steps,
        "best_step": result.best_step,
        "test_mean_auroc": test["mean"]["auroc"]["value"],
        "test_mean_auroc_ci": test["mean"]["auroc"]["ci"],
        "test_auroc": {name: entry["auroc"]["value"] for name, entry in test["labels"].items()},
        "table": str(result.output_dir / "metrics.md"),
        "table_markdown": (result.output_dir / "metrics.md").read_text(encoding="utf-8"),
        "heatmaps": str(result.heatmap_figure) if result.heatmap_figure else None,
        "model": str(result.model_dir),
    }


# ---------------------------------------------------------------------------- Diff-CXR stage
DIFFUSION_CONFIG = "diff-cxr-tiny-phantom"


def run_diffusion_demo(run_dir: Path, classifier_dir: Path | None, encoder_dir: Path | None = None, seed: int = 0,
                       overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Report -> image on phantoms (``configs/diff-cxr-tiny-phantom.yaml`` shrunk by ``overrides``):
    autoencoder, squeeze, U-ViT, DKIM, then generation for the test reports, scored by the
    classification stage's classifier when there is one (mAUC, controllability) and FD / KID in the
    pretraining stage's MAE encoder (a feature space that did learn phantoms; the text stage's short
    image tower does not)."""
    settings = [f"output_dir={run_dir}", f"seed={seed}", *overrides]
    if classifier_dir is not None:
        settings.append(f"evaluation.classifier_dir={classifier_dir}")
    if encoder_dir is not None:
        settings.append(f"evaluation.feature_encoder_dir={encoder_dir}")
    config = load_config(DiffCXRConfig, resolve_config_path(DIFFUSION_CONFIG), settings)
    summary = run_diff_cxr(config)
    return {
        "autoencoder": summary["autoencoder"]["result"]["per_dataset"]["phantom"],
        "retrieval": summary["text"]["result"],
        "evaluation": summary["evaluation"]["result"],
        "seconds": {stage: entry["seconds"] for stage, entry in summary.items()},
        "figures": {name: str(run_dir / "evaluation" / f"{name}.png") for name in ("examples", "guidance_sweep")},
    }


def _diffusion_markdown(result: dict, root: Path) -> list[str]:
    evaluation, autoencoder, retrieval = result["evaluation"], result["autoencoder"], result["retrieval"]
    sampling = evaluation["sampling"]
    lines = [
        "",
        "## Report -> image (Diff-CXR)",
        f"KL autoencoder: held-out phantoms at PSNR {autoencoder['psnr_mean']:.1f} dB, SSIM {autoencoder['ssim_mean']:.3f}. "
        f"Squeezed report token vs image tower, test retrieval R@1 {retrieval.get('text_to_image_R@1', float('nan')):.3f} / "
        f"R@5 {retrieval.get('text_to_image_R@5', float('nan')):.3f} (report -> image).",
        "",
        f"Generated for {evaluation['images']} test reports ({evaluation['model']}, {sampling['sampler']} {sampling['steps']} steps, "
        f"guidance {sampling['guidance_scale']:g}, {sampling['seconds_per_image']:.3f} s/image): "
        f"FD {evaluation['fd']:.3g} and KID {evaluation['kid']:.3g} in {evaluation['feature_space']} (not FID), "
        f"PSNR {evaluation['psnr']:.1f} dB / SSIM {evaluation['ssim']:.3f} against each report's real phantom.",
    ]
    mauc, control = evaluation.get("mauc", {}), evaluation.get("controllability", {})
    if "generated" in mauc:
        lines.append(f"The classification stage's classifier on the generated images: mAUC {mauc['generated']['mean']:.3f} "
                     f"against the reports' labels (on the real test phantoms: {mauc['real']['mean']:.3f}).")
    if "rate" in control:
        lines.append(f"Controllability: adding \"{control['sentence']}\" raised the classifier's {control['label']} probability "
                     f"on {control['rate']:.0%} of {control['pairs']} reports (95 % CI {control['ci_low']:.0%}-{control['ci_high']:.0%}; goal 80 %).")
    for name, path in result["figures"].items():
        lines += ["", f"![{name}]({Path(path).relative_to(root)})"]
    return lines
