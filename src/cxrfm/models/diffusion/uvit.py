"""U-ViT: Diff-CXR's latent denoiser (shared/papers/003 Sec. on the vanilla denoising process).

A plain ViT over one token sequence ``[time token, context tokens, latent patch tokens]`` with
U-Net-style long skips, as in baofff/U-ViT (``libs/uvit_t2i.py``): ``depth // 2`` in-blocks each
save their output, one mid block, ``depth // 2`` out-blocks each first fuse the saved output of
its mirror in-block (``Linear(2D -> D)`` over the concatenation), then a LayerNorm, a per-token
``Linear(D -> p²·C)``, unpatchify and a 3x3 convolution. It predicts the noise ε (ε-prediction;
the scheduler, the loss and classifier-free guidance live above the model).

Text-to-image U-ViT choices kept from the reference: the time token is the bare sinusoidal
embedding of width ``D`` (``mlp_time_embed=False``), no qkv bias, a learnt position embedding over
all ``1 + L_c + N`` tokens, trunc-normal(0.02) Linear weights with zero biases. LayerNorm eps is
PyTorch's 1e-5, as in the reference (our ViT uses 1e-6).

Classifier-free guidance: there is no learnt null context. Condition dropout in training replaces
the context by zeros, and the sampler runs the conditional and the all-zero unconditional context
as one batch.

The disease-knowledge adapter (``adapter.py``) talks to the denoiser through
:class:`UViTResiduals`, added to the saved skips and to the mid-block output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from cxrfm.models.layers import Block, PatchEmbed
from cxrfm.models.pretrained import load_pretrained, write_pretrained
from cxrfm.models.vit import check_number, check_positive_int

MODEL_TYPE = "uvit"
NORM_EPS = 1e-5  # nn.LayerNorm's default, which the reference uses


@dataclass
class UViTConfig:
    """Architecture of a :class:`UViT` on ``(in_channels, latent_size, latent_size)`` latents.

    ``depth`` counts the in- and out-blocks together (as in baofff/U-ViT): ``depth // 2`` of each
    plus one mid block, so ``depth + 1`` transformer blocks in all. ``context_dim`` is the width
    of the condition tokens (384 = MiniLM's), ``context_length`` their number (77, the tokens
    1..77 of the information squeeze). ``conv_out`` adds the final 3x3 convolution.
    """

    latent_size: int = 32
    in_channels: int = 4
    patch_size: int = 2
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    context_dim: int = 384
    context_length: int = 77
    conv_out: bool = True

    def __post_init__(self) -> None:
        # Checked before anything divides by them or sizes a tensor with them.
        for name in ("latent_size", "in_channels", "patch_size", "embed_dim", "depth", "num_heads", "context_dim", "context_length"):
            check_positive_int(self, name)
        check_number(self, "mlp_ratio", low=0.0, low_open=True)
        for name in ("qkv_bias", "conv_out"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} must be divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.depth < 2 or self.depth % 2:
            raise ValueError(f"depth must be even and >= 2 (depth // 2 in-blocks and as many out-blocks), got {self.depth}")

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid, ``latent_size / patch_size``."""
        return self.latent_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """``N``, the latent patch tokens."""
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        """``T = 1 + context_length + N``: time token, context tokens, patch tokens."""
        return 1 + self.context_length + self.num_patches

    @property
    def patch_dim(self) -> int:
        """Values one patch token predicts: ``patch_size² · in_channels``."""
        return self.patch_size**2 * self.in_channels


# Architecture only: the caller passes latent_size (8x-downsampled image side; 32 for 256² CXRs).
UVIT_PRESETS: dict[str, dict] = {
    "uvit-s-2": dict(patch_size=2, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0),  # U-ViT-S/2, the paper's
    "uvit-small-cpu": dict(patch_size=2, embed_dim=192, depth=6, num_heads=4, mlp_ratio=4.0),
    "uvit-tiny-cpu": dict(patch_size=2, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0),
}


class UViTResiduals(NamedTuple):
    """What a control adapter adds into a frozen :class:`UViT` (shared/papers/003 Eq. 6).

    ``skips``: one ``(B, T, D)`` per in-block, in in-block order, added to that block's saved
    output before its mirror out-block consumes it. ``middle``: ``(B, T, D)`` added to the
    mid-block output.
    """

    skips: list[torch.Tensor]
    middle: torch.Tensor


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B,) -> (B, dim)`` float32 as ``[cos(t·ω), sin(t·ω)]`` (U-ViT's order).

    ``ω_k = max_period^(-k / (dim/2))``; fractional timesteps are fine; an odd ``dim`` gets a zero
    last channel.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None]  # (B, dim/2)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class UViTEmbedding(nn.Module):
    """``(latents, timesteps, context)`` -> the token sequence ``(B, T, D)`` before the blocks.

    A module of its own so that the adapter can hold a trainable copy of exactly these parts.
    """

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed((config.patch_size, config.patch_size), config.in_channels, dim)
        self.context_embed = nn.Linear(config.context_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, dim))

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor) -> torch.Tensor:
        """``latents (B, C, h, w)``, ``timesteps (B,)`` or a scalar, ``context (B, L_c, context_dim)`` -> ``(B, T, D)``."""
        check_inputs(self.config, latents, context)
        batch = latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=latents.device)
        if timesteps.ndim == 0:  # one timestep for the whole batch (what samplers pass)
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(f"timesteps must be a scalar or (B,) = ({batch},), got {tuple(timesteps.shape)}")
        patches = self.patch_embed(latents)  # (B, N, D)
        time_token = timestep_embedding(timesteps, self.config.embed_dim).to(patches.dtype)[:, None]  # (B, 1, D)
        context_tokens = self.context_embed(context)  # (B, L_c, D)
        return torch.cat([time_token, context_tokens, patches], dim=1) + self.pos_embed


def check_inputs(config: UViTConfig, latents: torch.Tensor, context: torch.Tensor) -> None:
    """Raise a ValueError naming both shapes when ``latents`` or ``context`` do not fit ``config``."""
    side, channels = config.latent_size, config.in_channels
    if latents.ndim != 4 or tuple(latents.shape[1:]) != (channels, side, side):
        raise ValueError(f"latents must be (B, {channels}, {side}, {side}), got {tuple(latents.shape)}")
    expected = (latents.shape[0], config.context_length, config.context_dim)
    if tuple(context.shape) != expected:
        # The position embedding is learnt for exactly context_length context tokens.
        raise ValueError(
            f"context must be (B, context_length, context_dim) = {expected}, got {tuple(context.shape)}; "
            "pad or truncate the text tokens to context_length"
        )


def make_blocks(config: UViTConfig, count: int) -> nn.ModuleList:
    return nn.ModuleList(
        Block(config.embed_dim, config.num_heads, config.mlp_ratio, qkv_bias=config.qkv_bias, norm_eps=NORM_EPS)
        for _ in range(count)
    )


def run_encoder(in_blocks: nn.ModuleList, mid_block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """In-blocks then the mid block on ``(B, T, D)``: ``(mid output, [each in-block's output])``."""
    skips = []
    for block in in_blocks:
        tokens = block(tokens)
        skips.append(tokens)
    return mid_block(tokens), skips


def init_uvit_weights(module: nn.Module) -> None:
    """U-ViT's init for ``module.apply``: trunc-normal(0.02) Linear, zero bias; LayerNorm 1 / 0.

    Convolutions (patch embedding, final conv) keep PyTorch's default init, as in the reference.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class UViT(nn.Module):
    """Noise predictor ``ε(z_t, t, c)`` over ``(B, C, h, w)`` latents.

    Parts (public, so the adapter can copy and drive them): ``embedding`` (:class:`UViTEmbedding`,
    also :meth:`embed`), ``in_blocks``, ``mid_block``, ``out_blocks``, ``skip_linears`` (one
    ``Linear(2D -> D)`` per out-block), and :meth:`head`.
    """

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = config
        dim, half = config.embed_dim, config.depth // 2
        self.embedding = UViTEmbedding(config)
        self.in_blocks = make_blocks(config, half)
        self.mid_block = make_blocks(config, 1)[0]
        self.out_blocks = make_blocks(config, half)
        self.skip_linears = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(half))
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.decoder_pred = nn.Linear(dim, config.patch_dim)
        channels = config.in_channels
        self.final_conv = nn.Conv2d(channels, channels, 3, padding=1) if config.conv_out else nn.Identity()
        self.apply(init_uvit_weights)
        nn.init.trunc_normal_(self.embedding.pos_embed, std=0.02)

    def embed(self, latents: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor) -> torch.Tensor:
        """``latents (B, C, h, w)``, ``timesteps (B,)``, ``context (B, L_c, context_dim)`` -> tokens ``(B, T, D)``."""
        return self.embedding(latents, timesteps, context)

    def decode(self, tokens: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Out-blocks on the mid output ``(B, T, D)``, each fusing the last remaining skip first."""
        skips = list(skips)
        for block, skip_linear in zip(self.out_blocks, self.skip_linears):
            tokens = block(skip_linear(torch.cat([tokens, skips.pop()], dim=-1)))
        return tokens

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, T, D)`` -> ε ``(B, C, h, w)`` from the patch tokens (the last ``N``).

        The reference projects every token and then drops the time and context ones; projecting
        only the patch tokens gives the same result for less work.
        """
        config = self.config
        patches = self.decoder_pred(self.norm(tokens[:, -config.num_patches :]))  # (B, N, p²·C)
        latents = rearrange(
            patches, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=config.grid_size, p1=config.patch_size, p2=config.patch_size
        )
        return self.final_conv(latents)

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        residuals: UViTResiduals | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            latents: noisy latents ``z_t`` ``(B, C, h, w)``, ``h = w = latent_size``.
            timesteps: ``(B,)`` integer or fractional diffusion steps (or one scalar for all).
            context: ``(B, context_length, context_dim)`` report tokens; all zeros = unconditional.
            residuals: optional adapter features (:class:`UViTResiduals`), ``(B, T, D)`` each.

        Returns:
            ε ``(B, C, h, w)``.
        """
        middle, skips = run_encoder(self.in_blocks, self.mid_block, self.embed(latents, timesteps, context))
        if residuals is not None:
            if len(residuals.skips) != len(skips):
                raise ValueError(f"residuals.skips must hold {len(skips)} tensors (one per in-block), got {len(residuals.skips)}")
            middle = middle + residuals.middle
            skips = [skip + extra for skip, extra in zip(skips, residuals.skips)]
        return self.head(self.decode(middle, skips))

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` (model_type ``"uvit"``) + ``model.safetensors``."""
        return write_pretrained(directory, MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "UViT":
        """Load a ``save_pretrained`` folder; a bad one is a CheckpointError naming the file."""
        return load_pretrained(directory, MODEL_TYPE, UViTConfig, cls)
