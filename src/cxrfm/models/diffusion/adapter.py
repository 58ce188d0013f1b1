"""DKIM: Diff-CXR's disease-knowledge control adapter on a frozen U-ViT (shared/papers/003 Fig. 5, Eq. 6-7).

The trained denoiser is frozen. A trainable copy of its token embedding, in-blocks (the paper's
encoder blocks E) and mid block (M) reads the report context shifted by the disease-knowledge
hint; zero-initialised linear layers turn the copy's in-block and mid outputs into
:class:`~cxrfm.models.diffusion.uvit.UViTResiduals`, which the frozen model adds to its saved
skips and to its mid output before the out-blocks (D) consume them. At initialisation every zero
layer outputs exactly zero, so the controlled model *is* the base model (Eq. 7) and training
starts from the base's samples.

Where we fill gaps in the paper (and follow the closest public code, ControlNet-style adapters):

* The hint is the text encoder's embedding of the concatenated ``"There is {disease}."``
  templates (``"There is no finding."`` for normal studies), shaped like the report context
  ``(B, L_c, context_dim)``; the caller computes it with the same text encoder and squeeze.
* "Modify the report representations on the context level with a zero linear layer" is read as
  ``context' = context + hint_projection(hint)`` with a zero-initialised
  ``Linear(context_dim, context_dim)``; only the copy sees ``context'``. The frozen model keeps
  the plain report context, as Eq. 6 leaves its own path unchanged.
* The copy also holds a copy of the embedding (patch, context and position embeddings; the time
  token is parameter-free), which the paper does not mention: the copy needs its own input
  tokens, and copying them keeps the copy equal to the base at the start.
* Eq. 6 sums ``m + e_j`` into the decoder's input; U-ViT concatenates and applies
  ``Linear(2D -> D)``. We add ``zero(m')`` to ``m`` and ``zero(e'_j)`` to ``e_j`` *before* that
  concatenation, the U-ViT analogue. Eq. 6's eight decoder blocks are U-ViT's ``depth // 2``
  out-blocks here (six for U-ViT-S/2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.uvit import (
    MODEL_TYPE as UVIT_MODEL_TYPE,
    UViT,
    UViTConfig,
    UViTEmbedding,
    UViTResiduals,
    make_blocks,
    run_encoder,
)
from cxrfm.models.pretrained import build_and_load, config_from_record, read_config_record, read_weights, write_pretrained

MODEL_TYPE = "uvit-dkim"


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear whose weight and bias start at zero (the paper's "zero linear layer")."""
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DiseaseAdapter(nn.Module):
    """Trainable copy of a U-ViT's embedding, in-blocks and mid block, with zero output layers.

    Build it from a trained denoiser with :meth:`from_base`; ``DiseaseAdapter(config)`` gives the
    same layout with fresh weights (what loading a checkpoint fills in).
    """

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.embedding = UViTEmbedding(config)
        self.in_blocks = make_blocks(config, config.depth // 2)
        self.mid_block = make_blocks(config, 1)[0]
        self.hint_projection = zero_linear(config.context_dim, config.context_dim)
        self.skip_projections = nn.ModuleList(zero_linear(dim, dim) for _ in self.in_blocks)
        self.middle_projection = zero_linear(dim, dim)

    @classmethod
    def from_base(cls, base: UViT) -> "DiseaseAdapter":
        """Copy ``base``'s embedding, in-blocks and mid block into a new, trainable adapter.

        The weights are copied into freshly built modules (rather than deep-copying the base's),
        so the copy requires grad and is in training mode even when ``base`` is frozen.
        """
        reference = next(base.parameters())
        adapter = cls(base.config).to(device=reference.device, dtype=reference.dtype)
        adapter.embedding.load_state_dict(base.embedding.state_dict())
        adapter.in_blocks.load_state_dict(base.in_blocks.state_dict())
        adapter.mid_block.load_state_dict(base.mid_block.state_dict())
        return adapter

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor, hint: torch.Tensor
    ) -> UViTResiduals:
        """Residuals for the frozen model.

        Args:
            latents: ``(B, C, h, w)``; timesteps: ``(B,)`` or a scalar;
            context: report tokens ``(B, L_c, context_dim)``;
            hint: disease-template tokens, the same shape as ``context``.

        Returns:
            :class:`UViTResiduals` with ``depth // 2`` skips and a middle, each ``(B, T, D)``.
        """
        if hint.shape != context.shape:
            raise ValueError(f"hint must have the context's shape {tuple(context.shape)}, got {tuple(hint.shape)}")
        shifted_context = context + self.hint_projection(hint)  # (B, L_c, context_dim)
        tokens = self.embedding(latents, timesteps, shifted_context)  # (B, T, D)
        middle, skips = run_encoder(self.in_blocks, self.mid_block, tokens)
        return UViTResiduals(
            skips=[projection(skip) for projection, skip in zip(self.skip_projections, skips)],
            middle=self.middle_projection(middle),
        )


class ControlledUViT(nn.Module):
    """A frozen :class:`UViT` steered by a trainable :class:`DiseaseAdapter`.

    The base never trains: its parameters do not require grad, and :meth:`train` keeps it in
    eval mode. Give the optimiser :meth:`trainable_parameters` (the adapter's).
    """

    def __init__(self, base: UViT, adapter: DiseaseAdapter | None = None):
        super().__init__()
        if adapter is not None and adapter.config != base.config:
            raise ValueError(f"adapter config {adapter.config} does not match the base's {base.config}")
        self.base = base
        self.adapter = adapter if adapter is not None else DiseaseAdapter.from_base(base)
        self.base.requires_grad_(False)
        self.base.eval()

    @property
    def config(self) -> UViTConfig:
        return self.base.config

    def train(self, mode: bool = True) -> "ControlledUViT":
        """Set the adapter's mode; the frozen base stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters (the only ones to optimise)."""
        return list(self.adapter.parameters())

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor, hint: torch.Tensor
    ) -> torch.Tensor:
        """``latents (B, C, h, w)``, ``timesteps (B,)``, ``context`` and ``hint`` ``(B, L_c, context_dim)`` -> ε ``(B, C, h, w)``.

        For classifier-free guidance the unconditional row has an all-zero context; what hint it
        gets (zeros, or the same hint) is the sampler's choice.
        """
        residuals = self.adapter(latents, timesteps, context, hint)
        return self.base(latents, timesteps, context, residuals)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` (model_type ``"uvit-dkim"``, the U-ViT config) + base and adapter weights."""
        return write_pretrained(directory, MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ControlledUViT":
        """Load a ``save_pretrained`` folder (base and adapter); a bad one is a CheckpointError."""
        record = read_config_record(directory)
        model_type = record.pop("model_type")
        if model_type == UVIT_MODEL_TYPE:
            raise CheckpointError(
                directory,
                f"model_type {model_type!r} is a plain U-ViT denoiser, not a {MODEL_TYPE} checkpoint; "
                "start adapter training with ControlledUViT(UViT.from_pretrained(folder))",
            )
        if model_type != MODEL_TYPE:
            raise CheckpointError(directory, f"model_type {model_type!r} is not a {MODEL_TYPE} checkpoint")
        config = config_from_record(UViTConfig, record, directory)
        return build_and_load(directory, lambda: cls(UViT(config), DiseaseAdapter(config)), read_weights(directory), record)
