"""Diff-CXR stage 3 (AVA-TLS): symmetric InfoNCE between the squeezed report token 0 and an image
tower, validated by image<->report retrieval (R@1, R@5) on held-out pairs.

Batches are ``(images (B, 1, H, W), report_states (B, 1 + 256, 384))`` from a TensorDataset: the
frozen sentence encoder's states are computed once per report by the recipe.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxrfm.evaluation.retrieval import recall_at_k
from cxrfm.models.diffusion.text import info_nce
from cxrfm.training.contract import BaseTask, StepContext
from cxrfm.utils.runtime import unwrap_model


class ContrastiveTask(BaseTask):
    def __init__(self, val_pairs: TensorDataset | None, *, batch_size: int = 32):
        self.val_pairs, self.batch_size = val_pairs, batch_size

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, Any]:
        images, states = batch
        image_embeddings, text_embeddings = model(images, states)
        return {"loss": info_nce(image_embeddings, text_embeddings)}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.val_pairs is None:
            return {}
        image_embeddings, text_embeddings = embed_pairs(unwrap_model(model), self.val_pairs, self.batch_size)
        similarity = image_embeddings @ text_embeddings.T
        return {"loss": float(info_nce(image_embeddings, text_embeddings)), **recall_at_k(similarity.numpy())}


@torch.no_grad()
def embed_pairs(model: nn.Module, pairs: TensorDataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised ``(N, E)`` image and report embeddings of every pair, on CPU."""
    device = next(model.parameters()).device
    images, texts = [], []
    for image_batch, state_batch in DataLoader(pairs, batch_size=batch_size):
        image_embeddings, text_embeddings = model(image_batch.to(device), state_batch.to(device))
        images.append(F.normalize(image_embeddings.float(), dim=-1).cpu())
        texts.append(F.normalize(text_embeddings.float(), dim=-1).cpu())
    return torch.cat(images), torch.cat(texts)
