"""Diff-CXR stage 1: the KL autoencoder's objective (L1 + β KL, see
:mod:`cxrfm.models.diffusion.autoencoder`), validated by the PSNR of posterior-mean reconstructions.

Batches are image tensors ``(B, 1, H, W)`` in [0, 1] (:func:`cxrfm.data.sample.collate_images`);
``crop_size`` trains on random windows (the network is convolutional, so it then runs at any size
divisible by 8).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cxrfm.training.augment import random_square_crop
from cxrfm.training.contract import BaseTask, StepContext
from cxrfm.training.validation import reconstruction_error
from cxrfm.utils.runtime import unwrap_model


class AutoencoderTask(BaseTask):
    def __init__(self, val_split: Dataset | None, *, crop_size: int | None = None, batch_size: int = 16):
        self.val_split, self.crop_size, self.batch_size = val_split, crop_size, batch_size

    def training_step(self, model: nn.Module, batch: torch.Tensor, ctx: StepContext) -> dict[str, Any]:
        images = batch if self.crop_size is None else random_square_crop(batch, self.crop_size)
        output = model(images)
        return {"loss": output.loss, "l1": output.l1.detach(), "kl": output.kl.detach()}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Reconstruction MSE and PSNR (dB, pixels in [0, 1]) of the validation split."""
        if self.val_split is None:
            return {}
        core = unwrap_model(model)
        reconstruct = lambda images: core.decode(core.encode(images))  # noqa: E731
        return reconstruction_error(reconstruct, self.val_split, self.batch_size, next(core.parameters()).device)
