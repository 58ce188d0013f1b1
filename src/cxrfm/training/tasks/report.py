"""The report-generation objective: teacher-forced cross-entropy (plus, for UAR, the weighted
L_Global triplet loss and L_Mask), two-rate parameter groups, and validation by loss / perplexity
and NLG metrics of generated reports.

Batches are :class:`~cxrfm.pipelines.report_generation.ReportBatch` (``images (B, V, 1, H, W)`` or
None for the blank visual, ``tokens (B, L)``); the collator tokenises in the DataLoader workers.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrfm.evaluation.nlg import compute_nlg_metrics
from cxrfm.models.report import report_loss
from cxrfm.models.report.uar import triplet_loss
from cxrfm.models.report.tokenizer import ReportTokenizer
from cxrfm.pipelines.report_generation import DecodingSection, ReportBatch, ReportCollator, generate_reports, visual_inputs
from cxrfm.training.contract import BEST_DIR, BaseTask, StepContext, TrainConfig
from cxrfm.utils.files import replace_folder
from cxrfm.utils.runtime import unwrap_model

log = logging.getLogger(__name__)

MODEL_DIR = "model"


class ReportGenerationTask(BaseTask):
    """Teacher-forced cross-entropy step, two-rate parameter groups, validation on the val split.

    Args:
        tokenizer: the run's tokenizer (its pad id is ignored by the loss).
        val_split: studies scored by :meth:`validate` (None: no validation).
        views_per_study: views stacked per study; blank: the image-blind "language prior" visual.
        encoder_lr: the ViT's peak learning rate (None: the decoder's, ``train.lr``).
        decoding: generation settings of validation.
        val_metrics: NLG metrics of generated validation reports (``BLEU-1..4``, ``ROUGE-L``,
            ``CIDEr``; empty = loss and perplexity only), with beam ``val_beam_size`` (None:
            decoding's).
        select_metric: ``train.select_metric``; with it, ``model/`` gets the best validation weights.
        on_end: called as ``on_end(model_dir)`` after the model folder is written (the recipe
            adds ``generation.json`` there).
        loss_weights: ``(λ_CE, λ_Global, λ_Mask)`` (Eq. 13 of UAR); λ_Global and λ_Mask need a
            UAR model (:class:`~cxrfm.models.report.uar.UARGenerator`).
        margin: the triplet loss's margin ``α``.
        crop_size: ``(h, w)``: training images are randomly cropped to it (UAR: 128 -> 112);
            None: no crop.
    """

    def __init__(
        self,
        tokenizer: ReportTokenizer,
        val_split: Dataset | None,
        *,
        views_per_study: int = 1,
        blank: bool = False,
        encoder_lr: float | None = None,
        decoding: DecodingSection | None = None,
        val_metrics: tuple[str, ...] = ("BLEU-4", "CIDEr"),
        val_beam_size: int | None = 1,
        select_metric: str | None = None,
        on_end=None,
        loss_weights: tuple[float, float, float] = (1.0, 0.0, 0.0),
        margin: float = 0.2,
        crop_size: tuple[int, int] | None = None,
    ):
        self.tokenizer, self.val_split = tokenizer, val_split
        self.loss_weights, self.margin, self.crop_size = tuple(float(w) for w in loss_weights), margin, crop_size
        self.blank, self.encoder_lr, self.select_metric, self.on_end = blank, encoder_lr, select_metric, on_end
        self.decoding = decoding or DecodingSection()
        self.val_metrics, self.val_beam_size = tuple(val_metrics), val_beam_size
        self.collate = ReportCollator(tokenizer, views_per_study, with_images=not blank)

    def training_step(self, model: nn.Module, batch: ReportBatch, ctx: StepContext) -> dict[str, Any]:
        tokens = batch.tokens
        if self.crop_size is not None and batch.images is not None:
            batch.images = random_crop(batch.images, self.crop_size)
        ce_weight, global_weight, mask_weight = self.loss_weights
        extra = {"report_tokens": tokens} if global_weight > 0 else {}
        # Through forward (not model.loss) so DDP sees the call and syncs gradients.
        output = model(tokens[:, :-1], **visual_inputs(model, batch, self.blank), **extra)
        ce = report_loss(logits_of(output), tokens[:, 1:], self.tokenizer.pad_id)
        if not extra and mask_weight == 0:
            return {"loss": ce}
        terms = {"ce": ce}
        if extra:
            same_report = (tokens[:, None, :] == tokens[None, :, :]).all(-1)  # (B, B): not negatives
            terms["global"] = triplet_loss(output.image_features, output.report_features, self.margin, same_report)
        if mask_weight > 0:
            terms["mask"] = unwrap_model(model).mask_loss()
        loss = ce_weight * ce + global_weight * terms.get("global", 0.0) + mask_weight * terms.get("mask", 0.0)
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        decoder_lr = config.peak_lr()
        encoder_lr = decoder_lr if self.encoder_lr is None else self.encoder_lr
        return model.param_groups(encoder_lr, decoder_lr, config.weight_decay)

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Val loss / perplexity (every token, teacher forced) and NLG of generated val reports."""
        if self.val_split is None:
            return {}
        started = time.perf_counter()
        loader = self._loader(self.val_split)
        results = teacher_forced_loss(model, loader, self.tokenizer.pad_id, self.blank)
        metrics = self.val_metrics
        if metrics:
            decoding = self.decoding
            beam = self.val_beam_size or decoding.beam_size
            rows = generate_reports(model, loader, self.tokenizer, decoding, beam_size=beam, blank=self.blank)
            predictions = [row["prediction"] for row in rows]
            references = [row["reference"] for row in rows]
            results.update(compute_nlg_metrics(predictions, references, metrics=metrics, language=self.tokenizer.config.language))
        log.info("validation at step %d (%.1f s): %s", step, time.perf_counter() - started, _format(results))
        return results

    def _loader(self, split: Dataset) -> DataLoader:
        return DataLoader(split, batch_size=self.decoding.batch_size, shuffle=False, collate_fn=self.collate)

    def on_train_end(self, model: nn.Module, ema_model: nn.Module | None, output_dir: Path) -> None:
        """``<output_dir>/model``: the best validation weights when kept, else the final (EMA) ones."""
        best = Path(output_dir) / BEST_DIR
        use_best = self.select_metric is not None and (best / "model.safetensors").is_file()

        def write(folder: Path) -> None:
            if use_best:
                shutil.copytree(best, folder, dirs_exist_ok=True)
            else:
                (ema_model if ema_model is not None else model).save_pretrained(folder)
            if self.on_end is not None:
                self.on_end(folder)

        replace_folder(Path(output_dir) / MODEL_DIR, write)
        if use_best:
            log.info("model: best validation weights (%s)", json.loads((best / "best.json").read_text()))


def _format(results: Mapping[str, float]) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in results.items())


@torch.no_grad()
def teacher_forced_loss(
    model: nn.Module, loader: DataLoader, pad_id: int, blank: bool, *, swap_images: bool = False
) -> dict[str, float]:
    """Token-weighted mean cross-entropy over ``loader`` and its perplexity ``exp(loss)``.

    ``swap_images``: each report is scored against the NEXT study's images (rolled by one within
    the batch). A model that reads the images scores worse that way; one that learnt only the
    language prior scores the same.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        if swap_images and batch.images is not None:
            batch.images = batch.images.roll(1, dims=0)
        logits = logits_of(model(batch.tokens[:, :-1], **visual_inputs(model, batch, blank)))
        targets = batch.tokens[:, 1:]
        losses = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id, reduction="sum")
        total += float(losses)
        count += int((targets != pad_id).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def logits_of(output) -> torch.Tensor:
    """The ``(B, L, V)`` logits of a generator's forward (R2Gen: a tensor; UAR: ``UAROutput``)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def random_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A random ``size`` window of each study (all its views alike): ``(B, V, C, H, W)`` -> ``(B, V, C, h, w)``."""
    height, width = images.shape[-2:]
    h, w = size
    if (h, w) == (height, width):
        return images
    if h > height or w > width:
        raise ValueError(f"crop {size} is larger than the training images {(height, width)}")
    tops = torch.randint(0, height - h + 1, (images.shape[0],)).tolist()
    lefts = torch.randint(0, width - w + 1, (images.shape[0],)).tolist()
    return torch.stack([study[..., t : t + h, x : x + w] for study, t, x in zip(images, tops, lefts)])


@torch.no_grad()
def pooled_features(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """UAR's pooled image and report features ``(N, d)`` each (L_Global's), for the alignment score."""
    core = unwrap_model(model)
    device = next(core.parameters()).device
    was_training = core.training
    core.eval()
    images, reports = [], []
    try:
        for batch in loader:
            batch = batch.to(device)
            output = core(batch.tokens[:, :-1], images=batch.images, report_tokens=batch.tokens)
            images.append(output.image_features.float().cpu())
            reports.append(output.report_features.float().cpu())
    finally:
        core.train(was_training)
    return torch.cat(images), torch.cat(reports)
