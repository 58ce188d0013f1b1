"""The discrete-VAE objective (UAR's image tokenizer): relaxed reconstruction + KL, with the
Gumbel-softmax temperature annealed exponentially from ``start`` to ``end`` over training (DALL·E:
1 -> 1/16), and validation by hard-token reconstruction error.

Batches are image tensors ``(B, 1, H, W)`` in [0, 1] (:func:`collate_images`: only the pixels, so
datasets with different label sets mix); ``crop_size`` takes a random window of each image (UAR
reads 128 and crops 112).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cxrfm.training.augment import random_square_crop
from cxrfm.training.contract import BaseTask, StepContext
from cxrfm.training.validation import reconstruction_error
from cxrfm.utils.runtime import unwrap_model


class DVAETask(BaseTask):
    """Args: ``val_split`` (None: no validation), ``temperature`` (start, end), ``crop_size``."""

    def __init__(self, val_split: Dataset | None, *, temperature: tuple[float, float] = (1.0, 1 / 16),
                 crop_size: int | None = None, batch_size: int = 32):
        self.val_split, self.temperature, self.crop_size, self.batch_size = val_split, temperature, crop_size, batch_size

    def temperature_at(self, step: int, max_steps: int) -> float:
        start, end = self.temperature
        progress = min(step / max(max_steps - 1, 1), 1.0)
        return math.exp(math.log(start) + progress * (math.log(end) - math.log(start)))

    def training_step(self, model: nn.Module, batch: torch.Tensor, ctx: StepContext) -> dict[str, Any]:
        images = batch
        if self.crop_size is not None:
            images = random_square_crop(images, self.crop_size)
        temperature = self.temperature_at(ctx.step, ctx.config.max_steps)
        output = model(images, temperature=temperature)
        return {"loss": output.loss, "mse": output.mse.detach(), "kl": output.kl.detach(), "temperature": temperature}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Hard-token reconstruction MSE and PSNR (dB) over the validation split."""
        if self.val_split is None:
            return {}
        core = unwrap_model(model)
        reconstruct = lambda images: core.decode_tokens(core.encode_tokens(images))  # noqa: E731  (hard tokens)
        return reconstruction_error(reconstruct, self.val_split, self.batch_size, next(core.parameters()).device)

