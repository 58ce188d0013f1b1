"""Pooled-feature classifiers: the linear probe and full fine-tuning baselines.

``linear_probe``: the encoder is frozen (no gradients, always in eval mode so drop-path is off;
its final norm too); its pooled features go through one ``Linear(D -> K)``. ``finetune``: the same head, every weight
trained, usually with layer-wise learning-rate decay (``ClassifierConfig.layer_decay``, e.g. 0.75
as in MAE/BEiT fine-tuning).
"""

from __future__ import annotations

import torch
from torch import nn

from cxrfm.models.classify.base import ClassifierBase, ClassifierConfig, check_encoder, head_init_
from cxrfm.models.vit import VisionTransformer


class PooledClassifier(ClassifierBase):
    """Args:
        config: a :class:`ClassifierConfig` with ``kind`` ``linear_probe`` or ``finetune``.
        encoder: a (pretrained) :class:`VisionTransformer` with ``config.encoder``, or None.
    """

    kinds = ("linear_probe", "finetune")

    def __init__(self, config: ClassifierConfig, encoder: VisionTransformer | None = None):
        super().__init__()
        if config.kind not in ("linear_probe", "finetune"):
            raise ValueError(f"PooledClassifier is for linear_probe / finetune, not {config.kind!r}")
        self.config = config
        if encoder is not None:
            check_encoder(encoder, config)
        self.encoder = encoder if encoder is not None else VisionTransformer(config.encoder)
        width = config.encoder.embed_dim
        self.feature_norm = nn.BatchNorm1d(width, affine=False) if config.feature_batchnorm else None
        self.dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.encoder.embed_dim, config.num_labels)
        head_init_(self.head.weight, self.head.bias)
        self.logit_norm = nn.BatchNorm1d(config.num_labels) if config.logit_batchnorm else None
        self.freeze_trunk()

    def pool(self, normed_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B, D)``: mean of the patch tokens, or the class token."""
        if self.config.pool == "cls":
            return normed_tokens[:, 0]
        return normed_tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-block tokens ``(B, T, D)`` -> logits ``(B, K)`` (final norm, pooling, head)."""
        features = self.pool(self.encoder.norm(tokens))  # (B, D)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        logits = self.head(self.dropout(features))
        return self.logit_norm(logits) if self.logit_norm is not None else logits

    def forward_from_trunk(self, tokens: torch.Tensor) -> torch.Tensor:
        """Trunk tokens ``(B, T, D)`` -> remaining blocks -> norm, pooling, head -> ``(B, K)``."""
        return self.forward_head(self.encoder.forward_blocks(tokens, self.num_frozen_blocks))
