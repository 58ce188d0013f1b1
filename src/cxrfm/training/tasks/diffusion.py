"""Diff-CXR stages 4 and 5: ε-prediction on autoencoder latents, for the U-ViT denoiser and for its
disease-knowledge adapter (the same loss; only the trainable parameters differ).

Batches are ``(latents (B, 4, h, w), context (B, L, 384))`` -- or with a third tensor, the DKIM hint
``(B, L, 384)`` -- from a TensorDataset: latents and text conditions are computed once by the recipe
(the autoencoder and the report encoder are frozen here). Noise is added by diffusers'
:class:`~diffusers.DDPMScheduler` (``add_noise``) at uniform random timesteps. Condition dropout
(classifier-free guidance training, p = 0.1 in the paper's U-ViT setting) replaces the context --
and the hint, which is a condition too -- by zeros, the "empty report" the sampler's unconditional
branch uses.

Validation is the same loss on the validation set with noise and timesteps drawn from a fixed seed,
so its curve compares across steps and runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxrfm.training.contract import BaseTask, StepContext
from cxrfm.utils.runtime import unwrap_model


class DiffusionTask(BaseTask):
    """Args: ``scheduler`` (a diffusers DDPMScheduler), ``condition_dropout``, ``val_set`` (the same
    tensors as training batches). Frozen parameters (the adapter stage's base U-ViT) are left out
    of the optimiser by the default parameter groups."""

    def __init__(self, scheduler, *, condition_dropout: float = 0.1, val_set: TensorDataset | None = None,
                 batch_size: int = 32, val_seed: int = 0):
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        self.scheduler, self.condition_dropout = scheduler, condition_dropout
        self.val_set, self.batch_size, self.val_seed = val_set, batch_size, val_seed

    def noise_loss(self, model: nn.Module, batch, generator: torch.Generator | None = None, dropout: float = 0.0) -> torch.Tensor:
        latents, *conditions = batch
        count = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (count,), generator=generator, device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if dropout > 0:
            keep = (torch.rand(count, device=latents.device) >= dropout).to(latents.dtype)[:, None, None]
            conditions = [condition * keep for condition in conditions]
        prediction = model(noisy, timesteps, *conditions)
        return F.mse_loss(prediction.float(), noise.float())

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, Any]:
        return {"loss": self.noise_loss(model, batch, dropout=self.condition_dropout)}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_set is None:
            return {}
        core = unwrap_model(model)
        device = next(core.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.val_seed)
        total, count = 0.0, 0
        for batch in DataLoader(self.val_set, batch_size=self.batch_size):
            batch = [tensor.to(device) for tensor in batch]
            total += float(self.noise_loss(core, batch, generator)) * batch[0].shape[0]
            count += batch[0].shape[0]
        return {"loss": total / max(count, 1)}
