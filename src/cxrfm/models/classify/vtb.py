"""VTB-style disease classifier: label-name tokens fused with image tokens in the last ViT block.

After VTB (Cheng et al., "A Simple Visual-Textual Baseline for Pedestrian Attribute Recognition")
as the HD-MAE paper uses it for disease prediction:

1. the image runs through all encoder blocks but the last -> image tokens ``(B, T, D)``;
2. each label name's sentence embedding ``(K, E)`` is projected to ``D`` -> label tokens;
3. a learned *type* embedding is added to each modality (one for image tokens, one for labels);
4. ``[label tokens; image tokens]`` run through the last block and the final norm together, so
   every label token attends to the whole image;
5. label token ``k`` gives logit ``k`` through its own ``Linear(D -> 1)`` (a ``(K, D)`` weight).
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import nn

from cxrfm.models.classify.base import ClassifierBase, ClassifierConfig, check_encoder, head_init_
from cxrfm.models.classify.label_embedding import LabelEmbedder
from cxrfm.models.vit import VisionTransformer


class VTBClassifier(ClassifierBase):
    """Args:
        config: a :class:`ClassifierConfig` with ``kind="vtb"``.
        encoder: a (pretrained) :class:`VisionTransformer` with ``config.encoder``; None builds a
            randomly initialised one.
        label_embeddings: ``(K, E)`` precomputed label embeddings; None computes them now with
            ``config.text_model`` (ignored for ``label_embedding="learned"``).
    """

    kinds = ("vtb",)

    def __init__(
        self,
        config: ClassifierConfig,
        encoder: VisionTransformer | None = None,
        label_embeddings: torch.Tensor | None = None,
    ):
        super().__init__()
        self.config = config
        if encoder is not None:
            check_encoder(encoder, config)
        self.encoder = encoder if encoder is not None else VisionTransformer(config.encoder)
        width = config.encoder.embed_dim
        self.label_embedder = LabelEmbedder(
            config.label_names, config.label_embedding, config.label_embedding_dim, label_embeddings, config.text_model
        )
        self.label_projection = nn.Linear(config.label_embedding_dim, width)
        self.type_embed_image = nn.Parameter(torch.zeros(1, 1, width))
        self.type_embed_label = nn.Parameter(torch.zeros(1, 1, width))
        self.head_weight = nn.Parameter(torch.empty(config.num_labels, width))  # row k = Linear(D -> 1) of label k
        self.head_bias = nn.Parameter(torch.zeros(config.num_labels))
        self.logit_norm = nn.BatchNorm1d(config.num_labels) if config.logit_batchnorm else None
        self._init_new_weights()
        self.freeze_trunk()

    @classmethod
    def build(cls, config: ClassifierConfig, encoder=None, label_embeddings: torch.Tensor | None = None) -> "VTBClassifier":
        return cls(config, encoder=encoder, label_embeddings=label_embeddings)

    def _init_new_weights(self) -> None:
        nn.init.xavier_uniform_(self.label_projection.weight)
        nn.init.zeros_(self.label_projection.bias)
        # Distinct small type embeddings: identical zeros (the reference) tell the modalities apart
        # only through their content.
        nn.init.trunc_normal_(self.type_embed_image, std=0.02)
        nn.init.trunc_normal_(self.type_embed_label, std=0.02)
        head_init_(self.head_weight, self.head_bias)

    @property
    def depth(self) -> int:
        return self.config.encoder.depth

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, T, D)`` after blocks ``0 .. depth - 2`` (T = prefix + patches)."""
        return self.encoder.forward_blocks(self.trunk_tokens(images), self.num_frozen_blocks, self.depth - 1)

    def label_tokens(self, batch_size: int) -> torch.Tensor:
        """``(B, K, D)``: projected label embeddings plus the label type embedding."""
        tokens = self.label_projection(self.label_embedder()).unsqueeze(0) + self.type_embed_label  # (1, K, D)
        return repeat(tokens, "1 k d -> b k d", b=batch_size)

    def joint_sequence(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """``[label tokens; image tokens + image type]`` ``(B, K + T, D)``, before the last block."""
        labels = self.label_tokens(image_tokens.shape[0])
        return torch.cat([labels, image_tokens + self.type_embed_image], dim=1)

    def fuse(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Last block + final norm on the joint sequence -> ``(B, K + T, D)``."""
        joint = self.encoder.forward_blocks(self.joint_sequence(image_tokens), self.depth - 1)
        return self.encoder.norm(joint)

    def logits_from_joint(self, joint: torch.Tensor) -> torch.Tensor:
        """``(B, K + T, D)`` -> ``(B, K)``: each label token through its own ``Linear(D -> 1)``."""
        label_states = joint[:, : self.num_labels]  # (B, K, D)
        logits = torch.einsum("bkd,kd->bk", label_states, self.head_weight) + self.head_bias
        return self.logit_norm(logits) if self.logit_norm is not None else logits

    def forward_from_trunk(self, tokens: torch.Tensor) -> torch.Tensor:
        """Trunk tokens ``(B, T, D)`` -> the remaining image blocks -> fusion -> logits ``(B, K)``."""
        image_tokens = self.encoder.forward_blocks(tokens, self.num_frozen_blocks, self.depth - 1)
        return self.logits_from_joint(self.fuse(image_tokens))
