"""Scoring a trained Diff-CXR run on its test reports (``<run>/evaluation``).

Images are generated for up to ``evaluation.max_images`` test reports (one seed, batched) and scored:

* **FD / KID** between generated and real test images in the pooled features of a ViT trained here
  (default: the text stage's image tower), so the table says ``FD-<network>``, never FID;
* **PSNR / SSIM** of each generated image against its report's real image (a weak measure for a
  generative model: many images fit one report);
* **mAUC** of a domain classifier (``evaluation.classifier_dir``) on the generated images against the
  labels of the input reports, beside its mAUC on the real test images (the ceiling);
* **controllability**: test reports whose label is 0 get ``controllability_sentence`` appended (and
  their sentences about that label, e.g. "No pleural effusion.", removed); both
  versions are generated from the same noise and the classifier's probability for
  ``controllability_label`` must rise (``controllability`` in metrics.json; the goal is >= 80 %);
* **speed** (seconds per image, batched) and the denoiser's analytic GFLOPs per forward;
* figures: ``examples.png`` (report | generated | real) and ``guidance_sweep.png``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from cxrfm.errors import ConfigError
from cxrfm.evaluation.chexpert_labeler import label_report, split_sentences
from cxrfm.evaluation.image_generation import controllability, frechet_distance, kernel_distance, mean_auroc
from cxrfm.evaluation.tokenizer import reconstruction_scores
from cxrfm.figures.generation import save_generation_examples, save_guidance_sweep
from cxrfm.models.flops import uvit_flops_per_image
from cxrfm.pipelines.image_features import ClassifierProbabilities, EncoderFeatures
from cxrfm.models.diffusion.text import ReportImageContrast
from cxrfm.pipelines.report_to_image import ReportToImagePipeline, run_paths
from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
from cxrfm.recipes.diff_cxr.stages import Pairs, _write_json, load_pairs

log = logging.getLogger(__name__)


def run_evaluation_stage(config: DiffCXRConfig, *, use_adapter: bool | None = None, progress: bool = True) -> dict:
    section, sampling = config.evaluation, config.sampling
    out = Path(config.output_dir) / "evaluation"
    pipe = ReportToImagePipeline.from_pretrained(config.output_dir, use_adapter=use_adapter, sampler=sampling.sampler)
    pairs = load_pairs(config, "test")
    if pairs is None:
        raise ConfigError("data", "no dataset has a test split to generate for")
    pairs = pairs.subset(list(range(min(len(pairs.ids), section.max_images))))
    started = time.perf_counter()
    generated = generate(pipe, pairs.reports, config, progress=progress)
    seconds = time.perf_counter() - started
    metrics = {
        "model": "uvit+dkim" if pipe.uses_hint else "uvit",
        "images": len(pairs.ids),
        "sampling": {"sampler": sampling.sampler, "steps": sampling.num_inference_steps, "guidance_scale": sampling.guidance_scale,
                     "seed": sampling.seed, "seconds_per_image": seconds / len(pairs.ids), "batch_size": sampling.batch_size},
        "denoiser_gflops_per_forward": uvit_flops_per_image(pipe.denoiser.config) / 1e9,
        **pixel_scores(generated, pairs),
        **feature_scores(generated, pairs, config),
    }
    if section.classifier_dir:
        classifier = ClassifierProbabilities.from_pretrained(section.classifier_dir, device="cpu")
        metrics["mauc"] = classifier_scores(classifier, generated, pairs)
        metrics["controllability"] = controllability_scores(pipe, classifier, pairs, config, progress)
    shown = min(section.figure_examples, len(pairs.ids))
    save_generation_examples(pairs.reports[:shown], generated[:shown, 0].numpy(), pairs.images[:shown, 0].numpy(), out / "examples.png",
                             title=f"{metrics['model']}, {sampling.num_inference_steps} steps, guidance {sampling.guidance_scale:g}")
    sweep = {scale: generate(pipe, pairs.reports[:1], config, guidance_scale=scale, progress=False)[0, 0].numpy()
             for scale in section.guidance_sweep}
    save_guidance_sweep(pairs.reports[0], sweep, out / "guidance_sweep.png")
    _write_json(out / "metrics.json", metrics)
    log.info("report -> image (%s, %d test reports): %s", metrics["model"], len(pairs.ids), summary_line(metrics))
    return metrics


def generate(pipe: ReportToImagePipeline, reports: list[str], config: DiffCXRConfig, *, guidance_scale: float | None = None,
             progress: bool = True) -> torch.Tensor:
    sampling = config.sampling
    return pipe(reports, num_inference_steps=sampling.num_inference_steps,
                guidance_scale=sampling.guidance_scale if guidance_scale is None else guidance_scale,
                generator=torch.Generator().manual_seed(sampling.seed), batch_size=sampling.batch_size, progress=progress)


def pixel_scores(generated: torch.Tensor, pairs: Pairs) -> dict:
    scores = reconstruction_scores(pairs.images[:, 0].numpy(), generated[:, 0].numpy())
    return {name: float(np.mean(values)) for name, values in scores.items()}


def feature_scores(generated: torch.Tensor, pairs: Pairs, config: DiffCXRConfig) -> dict:
    """FD and KID in the feature space of ``evaluation.feature_encoder_dir`` (default: the text stage's image tower)."""
    if config.evaluation.feature_encoder_dir:
        extractor = EncoderFeatures.from_pretrained(config.evaluation.feature_encoder_dir, device="cpu")
    else:
        tower = ReportImageContrast.from_pretrained(run_paths(config.output_dir)["text"]).image_tower.encoder
        extractor = EncoderFeatures(tower, name="cxrfm-vit (Diff-CXR text-stage image tower)", device="cpu")
    real, fake = extractor(pairs.images), extractor(generated)
    kid_mean, kid_sd = kernel_distance(real, fake, subset_size=min(len(real), 100), seed=config.seed)
    return {"feature_space": extractor.name, "fd": frechet_distance(real, fake), "kid": kid_mean, "kid_sd": kid_sd}


def _label_columns(classifier: ClassifierProbabilities, pairs: Pairs) -> list[tuple[int, int, str]]:
    """(classifier column, pair-label column, name) for the labels both know."""
    if pairs.labels is None:
        return []
    index = {name: i for i, name in enumerate(pairs.label_names)}
    return [(column, index[name], name) for column, name in enumerate(classifier.label_names) if name in index]


def classifier_scores(classifier: ClassifierProbabilities, generated: torch.Tensor, pairs: Pairs) -> dict:
    """mAUC of the classifier on generated images vs the input reports' labels, and on the real images."""
    columns = _label_columns(classifier, pairs)
    if not columns:
        return {"skipped": "the classifier and the pairs share no label names"}
    ours, theirs, names = zip(*columns)
    labels = pairs.labels[:, list(theirs)].numpy()
    generated_scores = mean_auroc(classifier(generated)[:, list(ours)], labels, names)
    real_scores = mean_auroc(classifier(pairs.images)[:, list(ours)], labels, names)
    return {"generated": generated_scores, "real": real_scores}


def controllability_scores(pipe: ReportToImagePipeline, classifier: ClassifierProbabilities, pairs: Pairs,
                           config: DiffCXRConfig, progress: bool) -> dict:
    section = config.evaluation
    columns = {name: (ours, theirs) for ours, theirs, name in _label_columns(classifier, pairs)}
    if section.controllability_label not in columns:
        return {"skipped": f"{section.controllability_label!r} is not a label of both the classifier and the pairs"}
    ours, theirs = columns[section.controllability_label]
    lacking = [i for i in range(len(pairs.ids)) if float(pairs.labels[i, theirs]) == 0]
    if not lacking:
        return {"skipped": f"no test report lacks {section.controllability_label!r}"}
    without = [pairs.reports[i] for i in lacking]
    with_finding = [add_finding(report, section.controllability_sentence, section.controllability_label) for report in without]
    prob_without = classifier(generate(pipe, without, config, progress=progress))[:, ours]
    prob_with = classifier(generate(pipe, with_finding, config, progress=progress))[:, ours]
    return {"label": section.controllability_label, "sentence": section.controllability_sentence, **controllability(prob_without, prob_with)}


def add_finding(report: str, sentence: str, label: str) -> str:
    """``report`` with ``sentence`` appended and every sentence that already speaks of ``label`` (by our
    labeler: "No pleural effusion." for Pleural Effusion) removed, so the edit does not contradict itself."""
    kept = [part for part in split_sentences(report) if math.isnan(label_report(part).get(label, math.nan))]
    return " ".join([*(f"{part.strip().rstrip('.')}." for part in kept if part.strip()), sentence])


def summary_line(metrics: dict) -> str:
    parts = [f"FD {metrics['fd']:.3g} / KID {metrics['kid']:.3g} in {metrics['feature_space']}", f"PSNR {metrics['psnr']:.2f}",
             f"SSIM {metrics['ssim']:.3f}", f"{metrics['sampling']['seconds_per_image']:.3f} s/image"]
    mauc = metrics.get("mauc", {})
    if "generated" in mauc:
        parts.append(f"mAUC {mauc['generated']['mean']:.3f} (real {mauc['real']['mean']:.3f})")
    control = metrics.get("controllability", {})
    if "rate" in control:
        parts.append(f"controllability {control['rate']:.2f} of {control['pairs']}")
    return ", ".join(parts)
