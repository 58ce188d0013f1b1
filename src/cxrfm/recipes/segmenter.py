"""Training the lung segmenter: a Dice + BCE task for the toolkit's one loop, keeping the best weights.

``train_segmenter(load_config(SegmenterTrainConfig, resolve_config_path("segmenter-openist")))`` trains on OpenIST;
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

Pairs are preloaded once and letterboxed to the model's ``input_size`` (they are small); the
objective and its augmentation are :mod:`cxrfm.training.tasks.segmentation`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from cxrfm.anatomy.segmenter import PRESETS, LungSegmenter, LungSegmenterConfig
from cxrfm.data.registry import DatasetSpec, build_dataset
from cxrfm.errors import ConfigError
from cxrfm.training.augment import AffineAugmentSection
from cxrfm.training.contract import TrainConfig, check_device_name, check_rate
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.segmentation import LetterboxedPairs, SegmentationTask
from cxrfm.utils.runtime import make_run_dir, resolve_device, seed_everything

log = logging.getLogger(__name__)


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
        check_rate("lr", self.lr, positive=True)
        check_rate("weight_decay", self.weight_decay, positive=False)
        for name in ("batch_size", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_device_name(self.device)


@dataclass
class SegmenterTrainConfig:
    """The whole run: ``cxrfm segment train --config <this as YAML>``.

    ``data``: a :class:`~cxrfm.data.registry.DatasetSpec` whose samples carry a lung mask
    (``phantom``: exact masks, ``num_samples`` per split; ``openist``; ``covid`` with V7 masks;
    ``manifest`` with a ``mask`` column); the ``train`` and ``val`` roles are read.
    """

    model: LungSegmenterConfig = field(default_factory=lambda: PRESETS["tiny"])
    data: DatasetSpec = field(default_factory=lambda: DatasetSpec(kind="phantom", num_samples={"train": 48, "val": 12}))
    augment: AffineAugmentSection = field(default_factory=AffineAugmentSection)
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


def load_pairs(spec: DatasetSpec, role: str, phantom_size: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(image, lung_mask)`` pairs of split ``role`` at native size, each ``(1, H, W)`` float32 (phantoms at ``phantom_size``)."""
    if spec.kind == "phantom":
        samples = build_dataset(spec, role, image_size=phantom_size)
        return [(sample.image, sample.lung_mask) for sample in samples]
    from cxrfm.anatomy.evaluate import segmentation_pairs

    pairs = [(pair.image, pair.mask) for pair in segmentation_pairs(spec.kind, spec.root, spec.split_name(role))]
    limit = spec.cap(role)
    return pairs[:limit] if limit is not None else pairs


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
    resolve_device(optim.device, field="train.device")  # before any data is read
    if run_dir is None:
        run_dir = Path(config.output_dir) / config.run_name if resume else make_run_dir(config.output_dir, config.run_name)
    run_dir = Path(run_dir)
    size = config.model.input_size
    if train_pairs is None:
        train_pairs = load_pairs(config.data, "train", size)
    if val_pairs is None:
        val_pairs = load_pairs(config.data, "val", size)
    dataset = LetterboxedPairs(train_pairs, size)
    steps_per_epoch = len(dataset) // optim.batch_size
    if steps_per_epoch == 0:
        raise ConfigError("train.batch_size", f"{len(dataset)} training pairs cannot fill one batch of {optim.batch_size}")
    if not val_pairs:
        raise ConfigError("data.splits", f"no validation pairs in split {config.data.split_name('val')!r}: the best weights are chosen on them")
    log.info("segmenter: %d train / %d val pairs at %s, %d steps per epoch", len(train_pairs), len(val_pairs), size, steps_per_epoch)

    seed_everything(optim.seed)  # the initial weights
    model = LungSegmenter(config.model).to(memory_format=torch.channels_last if optim.channels_last else torch.contiguous_format)
    task = SegmentationTask(
        config.augment, val_pairs, bce_weight=optim.bce_weight, dice_weight=optim.dice_weight, channels_last=optim.channels_last
    )
    result = Trainer(model, task, dataset, trainer_config(optim, steps_per_epoch, run_dir), run_config=config).fit(resume=resume)
    if result.best is not None:  # rank 0 only
        log.info("best val Dice %.4f at step %d; weights in %s", result.best["value"], result.best["step"], run_dir)
    return run_dir
