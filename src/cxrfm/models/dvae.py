"""A 1-channel DALL·E-style discrete VAE: UAR's image tokenizer (LSU, shared/papers/002 Sec. 3.2).

No dVAE weights can be downloaded here, so the tokenizer is trained on our own CXRs and phantoms.
Encoder: three stride-2 convolution stages (8x downsampling) -> logits over ``codebook_size``
codes at each of the ``(H/8) x (W/8)`` positions. Training relaxes the code choice with
Gumbel-softmax (soft one-hots times the codebook, temperature annealed by the caller); tokens for
the report model are the argmax (:meth:`DiscreteVAE.encode_tokens`). Decoder: the mirror image
back to ``(B, 1, H, W)`` in [0, 1]. Loss: mean squared reconstruction error (pixels in [0, 1];
DALL·E's logit-Laplace needs its own pixel mapping and buys little on grey-scale CXRs) +
``kl_weight`` * KL(q || uniform prior over the codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.models.pretrained import load_pretrained, write_pretrained
from cxrfm.models.vit import check_number, check_positive_int

MODEL_TYPE = "dvae"


@dataclass
class DiscreteVAEConfig:
    """``image_size`` (square, divisible by ``downsample`` = 8), ``codebook_size`` (paper 8,192),
    ``hidden_dim`` (channels of the first stage; doubled at each of the other two),
    ``embedding_dim`` (codebook vectors), ``kl_weight`` (β of the KL term)."""

    image_size: int = 112
    codebook_size: int = 8192
    hidden_dim: int = 64
    embedding_dim: int = 64
    in_channels: int = 1
    downsample: int = 8
    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("image_size", "codebook_size", "hidden_dim", "embedding_dim", "in_channels"):
            check_positive_int(self, name)
        if self.downsample != 8:
            raise ValueError(f"downsample must be 8 (three stride-2 stages), got {self.downsample!r}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by downsample {self.downsample}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        check_number(self, "kl_weight", low=0.0)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample
        return (side, side)


DVAE_PRESETS: dict[str, dict] = {
    "dvae-paper": dict(codebook_size=8192, hidden_dim=64, embedding_dim=64),  # |V_I| = 8,192
    "dvae-small": dict(codebook_size=1024, hidden_dim=32, embedding_dim=32),
    "dvae-tiny-cpu": dict(codebook_size=256, hidden_dim=16, embedding_dim=16),
}


class ResidualBlock(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class DVAEOutput(dict):
    """``reconstruction (B, 1, H, W)``, ``logits (B, K, h, w)``, ``loss``, ``mse``, ``kl`` (scalars)."""

    __getattr__ = dict.__getitem__


class DiscreteVAE(nn.Module):
    """Images ``(B, C, H, W)`` in [0, 1] <-> code ids ``(B, (H/8) (W/8))``."""

    def __init__(self, config: DiscreteVAEConfig):
        super().__init__()
        self.config = config
        w = config.hidden_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 4, stride=2, padding=1), ResidualBlock(w),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), ResidualBlock(2 * w),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), ResidualBlock(4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, config.codebook_size, 1),
        )
        self.codebook = nn.Embedding(config.codebook_size, config.embedding_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.embedding_dim, 4 * w, 1), ResidualBlock(4 * w),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), ResidualBlock(2 * w),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), ResidualBlock(w),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, config.in_channels, 3, padding=1),
        )

    def _check(self, images: torch.Tensor) -> None:
        size, channels = self.config.image_size, self.config.in_channels
        if images.ndim != 4 or images.shape[1] != channels or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images must be (B, {channels}, {size}, {size}), got {tuple(images.shape)}")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> code logits ``(B, K, H/8, W/8)``."""
        self._check(images)
        return self.encoder(images * 2 - 1)  # centred input

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """One-hot (or relaxed) codes ``(B, K, h, w)`` -> reconstruction ``(B, C, 8h, 8w)`` (logits of [0, 1])."""
        embedded = torch.einsum("bkhw,kd->bdhw", codes, self.codebook.weight)
        return self.decoder(embedded)

    def forward(self, images: torch.Tensor, temperature: float = 1.0) -> DVAEOutput:
        """Relaxed pass for training: Gumbel-softmax codes at ``temperature``."""
        logits = self.logits(images)
        soft = F.gumbel_softmax(logits, tau=temperature, hard=False, dim=1)
        reconstruction = torch.sigmoid(self.decode_codes(soft))
        mse = F.mse_loss(reconstruction.float(), images.float())
        log_q = F.log_softmax(logits.float(), dim=1)
        # KL(q || uniform) per position = sum q log q + log K; averaged over positions.
        kl = (log_q.exp() * log_q).sum(1).mean() + math.log(self.config.codebook_size)
        return DVAEOutput(reconstruction=reconstruction, logits=logits, mse=mse, kl=kl, loss=mse + self.config.kl_weight * kl)

    @torch.no_grad()
    def encode_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, C, H, W)`` in [0, 1] -> code ids ``(B, (H/8) * (W/8))`` int64 (argmax)."""
        return self.logits(images).argmax(1).flatten(1)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Code ids ``(B, h * w)`` -> images ``(B, C, 8h, 8w)`` in [0, 1]."""
        h, w = grid or self.config.grid
        one_hot = F.one_hot(tokens.view(-1, h, w), self.config.codebook_size).permute(0, 3, 1, 2).to(self.codebook.weight.dtype)
        return torch.sigmoid(self.decode_codes(one_hot))

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors``."""
        return write_pretrained(directory, MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DiscreteVAE":
        """Load a ``save_pretrained`` folder; a bad one is a CheckpointError naming the file."""
        return load_pretrained(directory, MODEL_TYPE, DiscreteVAEConfig, cls)
