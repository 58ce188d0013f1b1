"""The lung segmenter's objective: Dice + BCE on letterboxed pairs, validation Dice, best-weight export.

Pairs are letterboxed once to the model's ``input_size`` (:class:`LetterboxedPairs`); augmentation
then runs batched on tensors with per-sample random numbers keyed by ``(seed, epoch, sample
index)`` (:func:`cxrfm.training.augment.augment_batch`).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cxrfm.anatomy.segmenter import CONFIG_FILE, WEIGHTS_FILE, LungSegmenter, letterbox
from cxrfm.data.sample import CXRBatch, CXRSample
from cxrfm.evaluation.segmentation import dice_score
from cxrfm.training.augment import AUGMENT_UNIFORMS, AffineAugmentSection, augment_batch
from cxrfm.training.contract import BEST_DIR, BaseTask, StepContext, batch_sample_ids
from cxrfm.training.randomness import STREAM_AUGMENT, hashed_uniform

log = logging.getLogger(__name__)


class LetterboxedPairs(Dataset):
    """``(image, lung mask)`` pairs letterboxed once to ``size``, served as :class:`CXRSample`.

    Items: ``image`` / ``lung_mask`` ``(1, *size)`` (masks binary) and ``meta["box"]`` =
    ``(top, left, height, width)`` of the image area inside the black padding.
    """

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int]):
        images, masks, boxes = [], [], []
        for image, mask in pairs:
            boxed_image, box = letterbox(image[None], size)
            boxed_mask, _ = letterbox(mask[None], size)
            images.append(boxed_image[0])
            masks.append((boxed_mask[0] > 0.5).float())
            boxes.append((box.top, box.left, box.height, box.width))
        self.images, self.masks, self.boxes = images, masks, boxes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> CXRSample:
        return CXRSample(image=self.images[index], lung_mask=self.masks[index], meta={"box": self.boxes[index]})


def valid_area(boxes: list[tuple[int, int, int, int]], size: tuple[int, int], device=None) -> torch.Tensor:
    """``(B, 1, *size)`` float: 1 inside each sample's image area ``(top, left, height, width)``, 0 on the padding."""
    valid = torch.zeros(len(boxes), 1, *size, device=device)
    for row, (top, left, height, width) in enumerate(boxes):
        valid[row, :, top : top + height, left : left + width] = 1
    return valid


def dice_bce_terms(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE (pixel calibration) and ``1 - soft Dice`` per image, averaged (overlap, insensitive to lung size)."""
    logits = logits.float()  # the sums below lose precision in bf16 / fp16
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets).sum(dim=(1, 2, 3))
    total = probabilities.sum(dim=(1, 2, 3)) + targets.sum(dim=(1, 2, 3))
    soft_dice = (2 * intersection + 1) / (total + 1)
    return bce, (1 - soft_dice).mean()


def dice_bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)`` of ``(B, 1, H, W)`` logits and binary targets."""
    bce, dice_loss = dice_bce_terms(logits, targets)
    return bce_weight * bce + dice_weight * dice_loss


def validation_dice(model: LungSegmenter, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean Dice at native resolution (``predict`` > 0.5, no post-processing) over ``pairs``."""
    scores = []
    for image, mask in pairs:
        probabilities = model.predict(image[None])
        scores.append(dice_score(probabilities[0, 0].cpu() > 0.5, mask[0]))
    return float(np.mean(scores)) if scores else math.nan


class SegmentationTask(BaseTask):
    """The segmenter's step for :class:`Trainer`: augmentation, Dice + BCE, val Dice, export of the best weights.

    Args:
        augment: the random affine + intensity settings (``augment:`` of the run config).
        val_pairs: ``(image, mask)`` ``(1, H, W)`` pairs scored at native size by :func:`validation_dice`.
        bce_weight, dice_weight: the loss mix.
        channels_last: feed the U-Net channels-last tensors (faster convolutions on CPU).
    """

    def __init__(
        self,
        augment: AffineAugmentSection,
        val_pairs: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        channels_last: bool = True,
    ):
        self.augment = augment
        self.val_pairs = val_pairs
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def training_step(self, model: nn.Module, batch: CXRBatch, ctx: StepContext) -> dict[str, Any]:
        images = batch.images
        sample_ids = batch_sample_ids(batch).to(images.device)
        uniforms = hashed_uniform(sample_ids, AUGMENT_UNIFORMS, seed=ctx.seed, epoch=ctx.epoch, stream=STREAM_AUGMENT)
        valid = valid_area([meta["box"] for meta in batch.meta], tuple(images.shape[-2:]), device=images.device)
        images, masks = augment_batch(images, batch.lung_masks, valid, self.augment, uniforms)
        logits = model(images.contiguous(memory_format=self.memory_format))
        bce, dice_loss = dice_bce_terms(logits, masks)
        loss = self.bce_weight * bce + self.dice_weight * dice_loss
        return {"loss": loss, "bce": bce, "soft_dice_loss": dice_loss}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """``{"dice": mean val Dice}``; the loop keeps the weights of the best one."""
        dice = validation_dice(model, self.val_pairs)
        log.info("step %d: val Dice %.4f", step, dice)
        return {"dice": dice}

    def on_train_end(self, model: nn.Module, ema_model: nn.Module | None, output_dir: Path) -> None:
        """Export the best weights to the run folder itself, where ``LungSegmenter.from_pretrained`` looks."""
        best = Path(output_dir) / BEST_DIR
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(best / name, Path(output_dir) / name)
