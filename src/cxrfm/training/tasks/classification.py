"""The disease-prediction objective: (weighted) BCE on image batches or cached trunk tokens, and
validation by mean AUROC.

Batches are :class:`CXRBatch` (images through the whole classifier) or, when the recipe cached a
frozen trunk's outputs, ``{"trunk_tokens": (B, T, D), "labels": (B, K)}`` dicts
(:class:`TrunkTokenDataset`): the same numbers, many times faster for a linear probe.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrfm.data.sample import collate_samples
from cxrfm.evaluation.classification import auroc_per_label
from cxrfm.models.classify import weighted_bce
from cxrfm.pipelines.classification import model_outputs, predict_dataset
from cxrfm.training.augment import AugmentSection, crop_and_jitter
from cxrfm.training.contract import BaseTask, StepContext, TrainConfig, batch_sample_ids


class TrunkTokenDataset(Dataset):
    """Cached trunk outputs: items ``{"trunk_tokens": (T, D), "labels": (K,)}``."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        self.tokens = tokens
        self.labels = labels

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"trunk_tokens": self.tokens[index], "labels": self.labels[index]}


@torch.no_grad()
def compute_trunk_tokens(model: nn.Module, dataset: Dataset, batch_size: int = 32, device: torch.device | str = "cpu") -> TrunkTokenDataset:
    """Run ``model``'s frozen trunk once over ``dataset`` (images -> ``(N, T, D)`` tokens)."""
    was_training = model.training
    model.eval()
    tokens, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples):
        tokens.append(model.trunk_tokens(batch.images.to(device)).float().cpu())
        labels.append(batch.labels.float())
    model.train(was_training)
    return TrunkTokenDataset(torch.cat(tokens), torch.cat(labels))


def _bce_from_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> float:
    valid = (labels == 0) | (labels == 1)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    return float(losses[valid].mean()) if valid.any() else math.nan


class ClassificationTask(BaseTask):
    """BCE on ``model(images)``; validation = mean AUROC and BCE on the validation split.

    Args:
        positive_ratio: ``(K,)`` training positive ratios for VTB's exp(1 - r) / exp(r) weights, or
            None for plain BCE.
        val_dataset: images (:class:`CXRSample`) or cached trunk tokens; None skips validation.
        augment: crop / jitter of the training images (never of cached tokens).
        batch_size: batch of validation prediction.
    """

    def __init__(
        self,
        positive_ratio: torch.Tensor | None,
        val_dataset: Dataset | None,
        *,
        augment: AugmentSection | None = None,
        batch_size: int = 32,
    ):
        self.positive_ratio = positive_ratio
        self.val_dataset = val_dataset
        self.augment_section = augment or AugmentSection()
        self.batch_size = batch_size

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        return model.param_groups(config.weight_decay, config.peak_lr())

    def augment(self, images: torch.Tensor, sample_ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return crop_and_jitter(self.augment_section, images, sample_ids, seed=ctx.seed, epoch=ctx.epoch)[0]

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, Any]:
        if isinstance(batch, dict):  # cached trunk tokens (no augmentation by construction)
            logits, labels = model_outputs(model, batch)
        else:
            logits, labels = model(self.augment(batch.images, batch_sample_ids(batch), ctx)), batch.labels
        return {"loss": weighted_bce(logits, labels, self.positive_ratio)}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_dataset is None:
            return {}
        device = next(model.parameters()).device
        probabilities, labels = predict_dataset(model, self.val_dataset, self.batch_size, device)
        aurocs = auroc_per_label(probabilities, labels)
        defined = aurocs[np.isfinite(aurocs)]
        return {"mean_auroc": float(defined.mean()) if len(defined) else math.nan, "loss": _bce_from_probabilities(probabilities, labels)}
