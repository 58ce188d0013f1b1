"""Diff-CXR stage 1: the KL autoencoder's objective (L1 + β KL, see
:mod:`cxrfm.models.diffusion.autoencoder`), validated by the PSNR of posterior-mean reconstructions.

Batches are image tensors ``(B, 1, H, W)`` in [0, 1] (:func:`cxrfm.data.sample.collate_images`);
``crop_size`` trains on random windows (the network is convolutional, so it then runs at any size
divisible by 8).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrfm.data.sample import collate_images
from cxrfm.training.augment import random_square_crop
from cxrfm.training.contract import BaseTask, StepContext
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
        device = next(core.parameters()).device
        total, count = 0.0, 0
        for images in DataLoader(self.val_split, batch_size=self.batch_size, collate_fn=collate_images):
            images = images.to(device)
            reconstruction = core.decode(core.encode(images))
            total += float(((reconstruction - images) ** 2).mean(dim=(1, 2, 3)).sum())
            count += images.shape[0]
        mse = total / max(count, 1)
        return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12))}
