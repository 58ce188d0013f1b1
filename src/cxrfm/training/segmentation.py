"""Training the lung segmenter: a Dice + BCE task for the toolkit's one loop, keeping the best weights.

``train_segmenter(load_config(SegmenterTrainConfig, "segmenter-openist.yaml"))`` trains on OpenIST;
the embedded default (no YAML) trains the ``tiny`` preset on phantoms in seconds. The run runs under
:class:`~cxrfm.training.loop.Trainer`, so it gets AdamW with warm-up + cosine, mixed precision,
DDP, crash-safe checkpoints with exact resume, TensorBoard and ``metrics.jsonl`` like every task.
Epochs are the config's unit; the loop counts optimiser steps (``epochs x steps_per_epoch``) and
validates and logs once per epoch.

The loop keeps the weights of the best validation Dice in ``best/`` (with ``best.json``: step and
Dice; remembered across resume); at the end they are exported to the run folder itself
(``config.json`` + ``model.safetensors``), which is what ``LungSegmenter.from_pretrained(run_dir)``
loads. The run folder also holds the resolved ``config.yaml``, ``metrics.jsonl`` (``loss`` per
epoch, ``val/dice`` per validation) and ``checkpoints/`` (for ``resume``).

Pairs are preloaded once, letterboxed to the model's ``input_size`` (they are small); augmentation
then runs batched on tensors with per-sample random numbers keyed by ``(seed, epoch, sample
index)`` (:func:`~cxrfm.training.randomness.hashed_uniform`): random affine (scale, rotation,
shift) applied to image and mask together, gamma / contrast / brightness on the image. No flips:
left and right lungs differ (heart on the left), so a mirrored chest is not a plausible input.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cxrfm.anatomy.evaluate import segmentation_pairs
from cxrfm.anatomy.segmenter import CONFIG_FILE, PRESETS, WEIGHTS_FILE, LungSegmenter, LungSegmenterConfig, letterbox
from cxrfm.data.sample import CXRBatch, CXRSample
from cxrfm.errors import ConfigError
from cxrfm.evaluation.segmentation import dice_score
from cxrfm.training.loop import BEST_DIR, BaseTask, StepContext, TrainConfig, Trainer, batch_sample_ids
from cxrfm.training.randomness import STREAM_AUGMENT, hashed_uniform
from cxrfm.utils.runtime import make_run_dir, seed_everything

log = logging.getLogger(__name__)


@dataclass
class SegmenterDataConfig:
    """Where the (image, lung mask) pairs come from.

    ``kind``: ``phantom`` (synthetic, exact masks; no files), ``openist`` (``root`` = the
    lung_seg_openist folder), ``covid`` (covid_chestxray with V7 masks) or ``manifest`` (any CSV /
    JSONL manifest with ``image``, ``mask`` and ``split`` columns; ``root`` = the file or its
    folder). ``root`` is resolved relative to the current directory. ``max_samples`` caps each split (0 = all).
    """

    kind: Literal["phantom", "openist", "covid", "manifest"] = "phantom"
    root: str = "../shared/data/lung_seg_openist"
    train_split: str = "train"
    val_split: str = "val"
    num_phantoms: int = 48
    max_samples: int = 0


@dataclass
class AugmentConfig:
    """Random transforms; ranges are symmetric around identity. ``enabled: false`` turns all off."""

    enabled: bool = True
    scale: tuple[float, float] = (0.85, 1.15)
    rotation_degrees: float = 10.0
    shift_fraction: float = 0.08
    gamma_log_range: float = 0.35
    contrast_range: float = 0.2
    brightness_range: float = 0.1


@dataclass
class SegmenterOptimConfig:
    """Optimisation, in epochs; :func:`trainer_config` turns it into the loop's :class:`TrainConfig`.

    The defaults are the embedded phantom preset: 8 epochs of 48 phantoms at 64x64 (val Dice about
    0.91 on 12 disjoint validation phantoms; 5 s on one busy CPU core). ``warmup_fraction`` of all steps warm up linearly, then the learning
    rate follows a half cosine to 0. ``betas`` default to AdamW's (the segmenter is small and
    trains for few steps; MAE's 0.95 is for long, noisy runs). ``checkpoint_every_epochs``: 0
    saves a checkpoint only at the end; ``save_checkpoints: false`` saves none (the best weights
    are written either way). ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    epochs: int = 8
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    seed: int = 0
    num_threads: int = 2
    progress: bool = True
    channels_last: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    checkpoint_every_epochs: int = 0
    keep_checkpoints: int = 2
    save_checkpoints: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")


@dataclass
class SegmenterTrainConfig:
    model: LungSegmenterConfig = field(default_factory=lambda: PRESETS["tiny"])
    data: SegmenterDataConfig = field(default_factory=SegmenterDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: SegmenterOptimConfig = field(default_factory=SegmenterOptimConfig)
    output_dir: str = "runs"
    run_name: str = "segmenter"


def trainer_config(optim: SegmenterOptimConfig, steps_per_epoch: int, run_dir: str | Path) -> TrainConfig:
    """The loop's config: epochs become steps; logging and validation once per epoch, keeping the best val Dice."""
    total_steps = optim.epochs * steps_per_epoch
    return TrainConfig(
        output_dir=str(run_dir),
        max_steps=total_steps,
        batch_size=optim.batch_size,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        betas=tuple(optim.betas),
        warmup_steps=max(1, int(total_steps * optim.warmup_fraction)),
        clip_grad=optim.clip_grad,
        precision=optim.precision,
        checkpoint_every=optim.checkpoint_every_epochs * steps_per_epoch,
        keep_checkpoints=optim.keep_checkpoints,
        save_checkpoints=optim.save_checkpoints,
        log_every=steps_per_epoch,
        validate_every=steps_per_epoch,
        select_metric="dice",
        select_mode="max",
        seed=optim.seed,
        num_threads=optim.num_threads,
        device=optim.device,
        tensorboard=optim.tensorboard,
        progress_bar=optim.progress,
    )


# ----------------------------------------------------------------------------------------- data


def load_pairs(
    data: SegmenterDataConfig, split: str, phantom_size: tuple[int, int], seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(image, lung_mask)`` pairs at native size, each ``(1, H, W)`` float32 (phantoms at ``phantom_size``)."""
    if data.kind == "phantom":
        from cxrfm.data.phantom import SPLIT_SEED_OFFSETS, PhantomDataset

        # Validation needs fewer phantoms than training; the per-split seed ranges keep them disjoint.
        is_train = split == data.train_split
        count = data.num_phantoms if is_train else max(8, data.num_phantoms // 4)
        offset = SPLIT_SEED_OFFSETS["train" if is_train else "val"]
        samples = PhantomDataset(num_samples=count, image_size=phantom_size, seed=offset + seed)
        pairs = [(sample.image, sample.lung_mask) for sample in samples]
    else:
        pairs = [(pair.image, pair.mask) for pair in segmentation_pairs(data.kind, data.root, split)]
    return pairs[: data.max_samples] if data.max_samples > 0 else pairs


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


# ---------------------------------------------------------------------------------- augmentation

# Random numbers per sample: scale, rotation, shift x, shift y, gamma, contrast, brightness.
AUGMENT_UNIFORMS = 7


def _between(uniforms: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * uniforms


def random_affine(stack: torch.Tensor, config: AugmentConfig, uniforms: torch.Tensor) -> torch.Tensor:
    """Same random scale/rotation/shift for all channels of each sample of ``(B, C, H, W)``.

    ``uniforms``: ``(B, >=4)`` in ``[0, 1)`` (scale, rotation, shift x, shift y).
    """
    uniforms = uniforms.to(device=stack.device, dtype=torch.float32)
    scale = _between(uniforms[:, 0], *config.scale)
    angle = torch.deg2rad(_between(uniforms[:, 1], -config.rotation_degrees, config.rotation_degrees))
    # Normalised coordinates span [-1, 1], so a shift of f image widths is 2f.
    shift = _between(uniforms[:, 2:4], -config.shift_fraction, config.shift_fraction) * 2
    # affine_grid maps output coordinates to input ones, so zooming in by s means sampling at 1/s.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(stack), list(stack.shape), align_corners=False)
    return F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_intensity(
    images: torch.Tensor, valid: torch.Tensor, config: AugmentConfig, uniforms: torch.Tensor
) -> torch.Tensor:
    """Gamma, contrast and brightness per sample, applied inside the image area only (padding stays black).

    ``uniforms``: ``(B, 3)`` in ``[0, 1)`` (gamma, contrast, brightness).
    """
    uniforms = uniforms.to(device=images.device, dtype=images.dtype)
    shape = (images.shape[0], 1, 1, 1)
    gamma = torch.exp(_between(uniforms[:, 0], -config.gamma_log_range, config.gamma_log_range)).view(shape)
    contrast = (1 + _between(uniforms[:, 1], -config.contrast_range, config.contrast_range)).view(shape)
    brightness = _between(uniforms[:, 2], -config.brightness_range, config.brightness_range).view(shape)
    adjusted = images.clamp(0, 1) ** gamma
    mean = (adjusted * valid).sum(dim=(1, 2, 3), keepdim=True) / valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    adjusted = (adjusted - mean) * contrast + mean + brightness
    return adjusted.clamp(0, 1) * valid


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, config: AugmentConfig, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1, H, W)`` images/masks/valid and ``(B, AUGMENT_UNIFORMS)`` uniforms -> augmented images and binary masks."""
    if not config.enabled:
        return images, masks
    images = random_intensity(images, valid, config, uniforms[:, 4:7])
    warped = random_affine(torch.cat([images, masks], dim=1), config, uniforms[:, :4])
    return warped[:, :1].contiguous(), (warped[:, 1:] > 0.5).float()


# ------------------------------------------------------------------------------------------ loss


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


# ------------------------------------------------------------------------------------ validation


def validation_dice(model: LungSegmenter, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean Dice at native resolution (``predict`` > 0.5, no post-processing) over ``pairs``."""
    scores = []
    for image, mask in pairs:
        probabilities = model.predict(image[None])
        scores.append(dice_score(probabilities[0, 0].cpu() > 0.5, mask[0]))
    return float(np.mean(scores)) if scores else math.nan


# ------------------------------------------------------------------------------------------ task


class SegmentationTask(BaseTask):
    """The segmenter's step for :class:`Trainer`: augmentation, Dice + BCE, val Dice, export of the best weights.

    Args:
        config: the run config (augmentation, loss weights, memory format).
        val_pairs: ``(image, mask)`` ``(1, H, W)`` pairs scored at native size by :func:`validation_dice`.
    """

    def __init__(self, config: SegmenterTrainConfig, val_pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        self.config = config
        self.val_pairs = val_pairs
        self.memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format

    def training_step(self, model: nn.Module, batch: CXRBatch, ctx: StepContext) -> dict[str, Any]:
        images = batch.images
        sample_ids = batch_sample_ids(batch).to(images.device)
        uniforms = hashed_uniform(sample_ids, AUGMENT_UNIFORMS, seed=ctx.seed, epoch=ctx.epoch, stream=STREAM_AUGMENT)
        valid = valid_area([meta["box"] for meta in batch.meta], tuple(images.shape[-2:]), device=images.device)
        images, masks = augment_batch(images, batch.lung_masks, valid, self.config.augment, uniforms)
        logits = model(images.contiguous(memory_format=self.memory_format))
        bce, dice_loss = dice_bce_terms(logits, masks)
        optim = self.config.train
        loss = optim.bce_weight * bce + optim.dice_weight * dice_loss
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


# -------------------------------------------------------------------------------------- training


def train_segmenter(
    config: SegmenterTrainConfig,
    run_dir: str | Path | None = None,
    train_pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    val_pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    resume: bool | str | Path = False,
) -> Path:
    """Train, validate every epoch, keep the best weights by val Dice; returns the run folder.

    ``run_dir`` defaults to a new ``output_dir/run_name`` folder (with ``resume``: that folder
    itself). ``train_pairs`` / ``val_pairs`` (``(image, mask)`` tensors ``(1, H, W)``) replace the
    data named by ``config.data``. ``resume``: ``True`` continues from the run folder's latest
    checkpoint; a checkpoint folder continues from that one (see :meth:`Trainer.fit`).
    """
    optim = config.train
    if run_dir is None:
        run_dir = Path(config.output_dir) / config.run_name if resume else make_run_dir(config.output_dir, config.run_name)
    run_dir = Path(run_dir)
    size = config.model.input_size
    if train_pairs is None:
        train_pairs = load_pairs(config.data, config.data.train_split, size, seed=optim.seed)
    if val_pairs is None:
        val_pairs = load_pairs(config.data, config.data.val_split, size, seed=optim.seed)
    dataset = LetterboxedPairs(train_pairs, size)
    steps_per_epoch = len(dataset) // optim.batch_size
    if steps_per_epoch == 0:
        raise ConfigError("train.batch_size", f"{len(dataset)} training pairs cannot fill one batch of {optim.batch_size}")
    if not val_pairs:
        raise ConfigError("data.val_split", f"no validation pairs in {config.data.val_split!r}: the best weights are chosen on them")
    log.info("segmenter: %d train / %d val pairs at %s, %d steps per epoch", len(train_pairs), len(val_pairs), size, steps_per_epoch)

    seed_everything(optim.seed)  # the initial weights
    model = LungSegmenter(config.model).to(memory_format=torch.channels_last if optim.channels_last else torch.contiguous_format)
    task = SegmentationTask(config, val_pairs)
    result = Trainer(model, task, dataset, trainer_config(optim, steps_per_epoch, run_dir), run_config=config).fit(resume=resume)
    if result.best is not None:  # rank 0 only
        log.info("best val Dice %.4f at step %d; weights in %s", result.best["value"], result.best["step"], run_dir)
    return run_dir


__all__ = [
    "AugmentConfig",
    "LetterboxedPairs",
    "SegmentationTask",
    "SegmenterDataConfig",
    "SegmenterOptimConfig",
    "SegmenterTrainConfig",
    "augment_batch",
    "dice_bce_loss",
    "dice_bce_terms",
    "load_pairs",
    "random_affine",
    "random_intensity",
    "train_segmenter",
    "trainer_config",
    "validation_dice",
]
