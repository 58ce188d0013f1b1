"""LNFS's two objectives (Diff-CXR, shared/papers/003 Sec. II-B): manifold modelling and explicit
supervision, over batches of a ``TensorDataset`` (collated by torch's ``default_collate`` into a
list of stacked tensors).

* :class:`LatentReconstructionTask`: batches ``[latents (B, C, h, w)]`` of the typical normal set;
  loss = MSE between the reconstructor's output and its input.
* :class:`LatentDiscriminationTask`: batches ``[latents (B, C, h, w), targets (B,)]`` with 0 =
  typical normal, 1 = typical noisy; loss = BCE with logits, ``pos_weight`` balancing the few
  noisy items against the many normal ones (the recipe passes ``normal / noisy``).

``input_noise`` adds Gaussian noise of that standard deviation to the (standardised) latents of
each training batch: the noisy set is small, and jitter keeps either network from memorising
its items. Noise is drawn from a generator keyed by ``(seed, step, micro_step)``, so a run is
reproducible whatever else draws random numbers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.training.contract import BaseTask, StepContext


def jitter(latents: torch.Tensor, std: float, ctx: StepContext) -> torch.Tensor:
    """``latents + N(0, std^2)`` (unchanged when ``std`` is 0), keyed by the step."""
    if std <= 0:
        return latents
    generator = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.step * 97 + ctx.micro_step)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    return latents + std * noise.to(device=latents.device, dtype=latents.dtype)


class LatentReconstructionTask(BaseTask):
    """MSE reconstruction of typical normal latents (the target is the clean, un-jittered input)."""

    def __init__(self, input_noise: float = 0.0):
        self.input_noise = float(input_noise)

    def training_step(self, model: nn.Module, batch: list[torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        (latents,) = batch  # (B, C, h, w)
        reconstruction = model(jitter(latents, self.input_noise, ctx))
        return {"loss": F.mse_loss(reconstruction.float(), latents.float())}


class LatentDiscriminationTask(BaseTask):
    """BCE with logits: typical normal (0) vs typical noisy (1), noisy items weighted by ``pos_weight``."""

    def __init__(self, pos_weight: float = 1.0, input_noise: float = 0.0):
        if not pos_weight > 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight}")
        self.pos_weight = float(pos_weight)
        self.input_noise = float(input_noise)

    def training_step(self, model: nn.Module, batch: list[torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        latents, targets = batch  # (B, C, h, w), (B,)
        logits = model(jitter(latents, self.input_noise, ctx)).float()  # (B,)
        targets = targets.float()
        weight = torch.tensor(self.pos_weight, device=logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
        accuracy = ((logits > 0).float() == targets).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach(), "noisy_share": targets.mean()}
