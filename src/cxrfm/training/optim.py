"""Parameter groups, the learning-rate rule and the warm-up + cosine schedule.

Two defects of the HD-MAE reference code are avoided here on purpose:

* its schedule was computed but never written into the optimiser. :func:`build_scheduler` returns a
  ``LambdaLR`` that the loop steps after every optimiser step, and the tests read the optimiser's
  actual ``lr``;
* its "no weight decay" rule froze biases and LayerNorms instead of exempting them from decay.
  :func:`default_param_groups` only changes ``weight_decay``; every trainable parameter is
  optimised exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

# Parameters whose name contains one of these are learned offsets, not weights: decaying them
# towards zero only hurts (MAE, timm and BEiT all exempt them).
NO_DECAY_NAME_PARTS = ("pos_embed", "position_embedding", "cls_token", "mask_token", "register_token", "type_embed")


def is_no_decay(name: str, parameter: torch.Tensor) -> bool:
    """Biases, norm scales (1-D), position embeddings and learned tokens get no weight decay."""
    if parameter.ndim <= 1 or name.endswith(".bias"):
        return True
    return any(part in name for part in NO_DECAY_NAME_PARTS)


def default_param_groups(model: nn.Module, weight_decay: float, extra_no_decay: Iterable[str] = ()) -> list[dict]:
    """Two AdamW groups over the *trainable* parameters: decayed weights and everything else.

    Frozen parameters (``requires_grad=False``) are left out because the caller froze them; nothing
    is frozen here.
    """
    extra = tuple(extra_no_decay)
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if is_no_decay(name, parameter) or any(part in name for part in extra):
            no_decay.append(parameter)
            no_decay_names.append(name)
        else:
            decay.append(parameter)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "param_names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names})
    return groups


def scaled_learning_rate(base_lr: float, effective_batch_size: int, reference_batch: int = 256) -> float:
    """The MAE rule ``lr = base_lr * effective_batch / 256`` (Goyal et al. linear scaling)."""
    return base_lr * effective_batch_size / reference_batch


def lr_factor(step: int, *, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimiser step ``step`` (0-based).

    Linear warm-up that reaches the peak on the last warm-up step (step 0 already learns, unlike
    a ``step / warmup`` ramp that wastes it), then a half-cycle cosine from the peak at
    ``step = warmup_steps`` down to ``min_lr_ratio`` at ``step = max_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_weight_decay(step: int, *, max_steps: int, start: float, end: float) -> float:
    """Weight decay rising (or falling) from ``start`` to ``end`` along a half cosine (DINO/HD-MAE code)."""
    progress = min(1.0, step / max(1, max_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_steps: int, peak_lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration warm-up + cosine, applied to every group (groups keep their relative scale)."""
    min_ratio = min_lr / peak_lr if peak_lr > 0 else 0.0

    def factor(step: int) -> float:
        return lr_factor(step, max_steps=max_steps, warmup_steps=warmup_steps, min_lr_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
