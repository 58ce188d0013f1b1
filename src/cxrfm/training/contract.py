"""What a training task and the one :class:`~cxrfm.training.loop.Trainer` agree on.

A task (``cxrfm.training.tasks.<objective>``) imports this module, never the loop: its
``training_step`` gets a batch and a :class:`StepContext` and returns a loss; its optional hooks
(``validate``, ``on_figure``, ``on_train_end``) and ``param_groups`` are described by
:class:`TrainingTask`. :class:`TrainConfig` is the run-config section every recipe shares
(``train:`` in YAML); :class:`TrainResult` is what ``Trainer.fit`` returns.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from cxrfm.data.sample import CXRBatch
from cxrfm.errors import DatasetError
from cxrfm.training.optim import default_param_groups, scaled_learning_rate
from cxrfm.utils.runtime import refuse_file_in_path, resolve_device

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # availability is checked when the run starts

def check_rate(name: str, value: float, *, positive: bool) -> None:
    """A learning rate (``positive``: finite and > 0) or a decay / floor (finite and >= 0)."""
    if positive and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if not positive and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def check_device_name(device: str) -> None:
    """A device string torch would take (whether it exists here is :func:`check_run_settings`'s job)."""
    if not DEVICE_PATTERN.fullmatch(str(device).strip().lower()):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


BEST_DIR = "best"  # <output_dir>/best: weights of the best validation so far (TrainConfig.select_metric)
BEST_FILE = "best.json"


@dataclass
class TrainConfig:
    """Everything the loop needs; every task shares it.

    Attributes:
        output_dir: run folder (checkpoints/, figures/, tensorboard/, metrics.jsonl, config.yaml).
        max_steps: optimiser steps.
        batch_size: GLOBAL samples per optimiser step (all ranks and accumulation micro-steps).
        grad_accum_steps: micro-steps per optimiser step.
        lr: peak learning rate; None -> ``base_lr * batch_size / 256``.
        base_lr: learning rate per 256 samples (used when ``lr`` is None).
        weight_decay, betas: AdamW (no decay on biases, norms, position embeddings, tokens).
        optimizer: ``adamw`` (decoupled weight decay) or ``adam`` (L2 penalty added to the
            gradient, as R2Gen trains); amsgrad: the AMSGrad variant of either.
            A parameter group returned by the task with its own ``"lr"`` keeps that peak learning
            rate (e.g. encoder 5e-5, decoder 1e-4); the schedule scales every group alike.
        weight_decay_end: when set, the decay of the decayed groups follows a half cosine from
            ``weight_decay`` to this value (the HD-MAE code's 0.04 -> 0.4); None keeps it constant.
        warmup_steps: linear warm-up steps; then half-cycle cosine down to ``min_lr``.
        clip_grad: max global gradient norm, or None.
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler).
        ema_decay: keep an exponential moving average of the weights (e.g. 0.9999), or None.
        checkpoint_every: save every N steps (0: only at the end); keep_checkpoints: keep the last K.
        save_checkpoints: False saves nothing at all (benchmarks, smoke runs).
        log_every, figure_every, validate_every: cadence in steps (0 disables figures/validation
            except at the end).
        select_metric: a key of the task's ``validate`` results (e.g. ``"BLEU-4"``, ``"loss"``):
            after each validation whose value beats the best so far (``select_mode`` ``max`` or
            ``min``), the weights are saved to ``<output_dir>/best/`` with ``best.json``
            (step, metric, value). Model selection on validation data only; None keeps nothing.
        figure_samples: samples in the fixed figure batch.
        seed: base seed of data order, per-sample randomness and global RNGs.
        num_workers: DataLoader worker processes per rank.
        num_threads: torch CPU threads (None: torch's default). On shared CPUs 1 is often faster.
        device: ``auto`` (cuda:<local rank> if available, else cpu), ``cpu``, ``cuda``.
        compile: wrap the model in ``torch.compile``.
        shuffle: shuffle map-style datasets each epoch.
        tensorboard, progress_bar: rank-0 outputs.
        find_unused_parameters: passed to DDP for tasks that skip some parameters.
    """

    output_dir: str = "runs/untitled"
    max_steps: int = 100
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float | None = None
    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: Literal["adamw", "adam"] = "adamw"
    amsgrad: bool = False
    warmup_steps: int = 0
    min_lr: float = 0.0
    clip_grad: float | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ema_decay: float | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    save_checkpoints: bool = True
    log_every: int = 10
    figure_every: int = 0
    validate_every: int = 0
    select_metric: str | None = None
    select_mode: Literal["max", "min"] = "max"
    figure_samples: int = 4
    seed: int = 0
    num_workers: int = 0
    num_threads: int | None = None
    device: str = "auto"
    compile: bool = False
    shuffle: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "figure_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "figure_every", "validate_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.clip_grad is not None and not self.clip_grad > 0:  # also refuses NaN
            raise ValueError(f"clip_grad must be > 0 or null, got {self.clip_grad}")
        for name in ("lr", "base_lr"):
            if getattr(self, name) is not None:
                check_rate(name, getattr(self, name), positive=True)
        for name in ("weight_decay", "min_lr"):
            check_rate(name, getattr(self, name), positive=False)
        if self.weight_decay_end is not None and not (math.isfinite(self.weight_decay_end) and self.weight_decay_end >= 0):
            raise ValueError(f"weight_decay_end must be a finite number >= 0 or null, got {self.weight_decay_end}")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")
        check_device_name(self.device)

    def peak_lr(self) -> float:
        """The learning rate at the end of warm-up."""
        return self.lr if self.lr is not None else scaled_learning_rate(self.base_lr, self.batch_size)


def check_run_settings(config: TrainConfig, field: str = "train") -> torch.device:
    """What can only be checked on this machine, before any data is read or model built: the
    device exists (``cuda`` without a GPU is an error) and ``output_dir`` is not a file.
    Returns the resolved device."""
    device = resolve_device(config.device, field=f"{field}.device")
    refuse_file_in_path(config.output_dir, f"{field}.output_dir")
    return device


@dataclass
class StepContext:
    """What a task's ``training_step`` may need besides the model and the batch.

    ``epoch`` and ``seed`` key per-sample randomness (see :func:`batch_sample_ids`).
    """

    step: int
    epoch: int
    micro_step: int
    seed: int
    device: torch.device
    rank: int
    world_size: int
    config: TrainConfig


@runtime_checkable
class TrainingTask(Protocol):
    """What a task provides. Optional hooks, looked up with ``getattr``:

    * ``on_figure(model, batch, step, out_dir) -> None`` (rank 0, no grad, fixed batch);
    * ``validate(model, step) -> dict[str, float]`` (rank 0; ``TrainConfig.select_metric`` picks
      one of its keys to keep the best weights by);
    * ``on_train_end(model, ema_model, output_dir) -> None`` (rank 0, e.g. export an encoder).
    """

    def training_step(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        """Forward once; return ``{"loss": scalar tensor with grad, other_name: scalar, ...}``."""
        ...

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        """AdamW parameter groups (see :func:`default_param_groups`)."""
        ...


class BaseTask:
    """Convenience base: default parameter groups, no optional hooks."""

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        return default_param_groups(model, config.weight_decay)

    def training_step(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (on every rank)."""

    step: int
    metrics: dict[str, float]
    last_checkpoint: Path | None
    output_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"step", "metric", "value", "path"} with select_metric


def batch_sample_ids(batch: CXRBatch) -> torch.Tensor:
    """``(B,)`` int64 ids of a batch's samples, which key per-sample random numbers.

    The dataset index (``meta["index"]``, set by the Trainer for map-style datasets), else a CRC32
    of ``meta["path"]`` / ``meta["shard_key"]`` / ``meta["key"]`` (shard streams). Never the batch
    position or rank, so the numbers do not depend on how batches are split.
    """
    ids = []
    for position, meta in enumerate(batch.meta):
        if "index" in meta:
            ids.append(int(meta["index"]))
            continue
        name = next((meta[key] for key in ("path", "shard_key", "key") if meta.get(key)), None)
        if name is None:
            raise DatasetError("batch", f"sample {position} has no meta index, path or key to identify it")
        ids.append(zlib.crc32(str(name).encode("utf-8")))
    return torch.tensor(ids, dtype=torch.int64)
