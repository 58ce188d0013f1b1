"""Diff-CXR's first stage: a 1-channel KL autoencoder, 8x downsampling, 4 latent channels.

The network is diffusers' :class:`~diffusers.AutoencoderKL` built from a config (Stable Diffusion's
encoder/decoder: ResNet blocks, a self-attention mid block, a diagonal Gaussian posterior), with one
input and one output channel. No SD-VAE weights can be downloaded here, so it is trained from
scratch on CXRs (``cxrfm diffusion autoencoder``). A 256² image becomes ``4 x 32 x 32`` latents.

Deviation from SD's recipe: the loss is L1 + ``kl_weight`` * KL only. SD adds an LPIPS perceptual
term and a patch GAN; LPIPS needs ImageNet VGG weights, which we cannot download, and a GAN is out
of the CPU budget. Expect blurrier reconstructions than SD's at the same compression.

Latents are multiplied by ``scaling_factor`` (SD: 0.18215) so the diffusion model sees roughly
unit-variance inputs; the recipe sets it to 1 / std of the training latents after training, which is
how SD's constant was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.models.pretrained import load_pretrained, write_pretrained
from cxrfm.models.vit import check_number, check_positive_int

MODEL_TYPE = "cxr-autoencoder"


@dataclass
class AutoencoderConfig:
    """``block_out_channels``: widths of the four resolution levels (three downsamplings: 8x);
    ``layers_per_block``: ResNet blocks a level; ``norm_num_groups`` must divide every width;
    ``kl_weight``: β of the KL term (SD: 1e-6); ``scaling_factor``: latents are multiplied by it."""

    image_size: int = 256
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    in_channels: int = 1
    kl_weight: float = 1e-6
    scaling_factor: float = 1.0
    mid_block_attention: bool = True

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(width) for width in self.block_out_channels)
        for name in ("image_size", "layers_per_block", "latent_channels", "norm_num_groups", "in_channels"):
            check_positive_int(self, name)
        if len(self.block_out_channels) != 4:
            raise ValueError(f"block_out_channels must list 4 widths (8x downsampling), got {list(self.block_out_channels)}")
        if any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every width in {list(self.block_out_channels)}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by {self.downsample}")
        check_number(self, "kl_weight", low=0.0)
        check_number(self, "scaling_factor", low=0.0, low_open=True)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.downsample
        return (self.latent_channels, side, side)


AUTOENCODER_PRESETS: dict[str, dict] = {
    "kl-f8": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),  # SD's widths
    "kl-f8-small": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=16),
    "kl-f8-tiny-cpu": dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8),
}


@dataclass
class AutoencoderOutput:
    """``reconstruction (B, C, H, W)`` in [0, 1]; ``loss``, ``l1``, ``kl`` scalars."""

    reconstruction: torch.Tensor
    loss: torch.Tensor
    l1: torch.Tensor
    kl: torch.Tensor


class CXRAutoencoder(nn.Module):
    """Images ``(B, 1, H, W)`` in [0, 1] <-> scaled latents ``(B, 4, H/8, W/8)``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        from diffusers import AutoencoderKL  # the model's one heavy dependency, imported when built

        self.config = config
        self.vae = AutoencoderKL(
            in_channels=config.in_channels, out_channels=config.in_channels,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
            sample_size=config.image_size, scaling_factor=config.scaling_factor,
            mid_block_add_attention=config.mid_block_attention,
        )

    def _check(self, images: torch.Tensor) -> None:
        channels = self.config.in_channels
        if images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(f"images must be (B, {channels}, H, W), got {tuple(images.shape)}")
        if images.shape[-1] % self.config.downsample or images.shape[-2] % self.config.downsample:
            raise ValueError(f"image sides must be divisible by {self.config.downsample}, got {tuple(images.shape[-2:])}")

    def posterior(self, images: torch.Tensor):
        """diffusers' DiagonalGaussianDistribution over unscaled latents, for ``images`` in [0, 1]."""
        self._check(images)
        return self.vae.encode(images * 2 - 1).latent_dist

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> scaled latents ``(B, 4, H/8, W/8)`` (the posterior mean unless ``sample``)."""
        distribution = self.posterior(images)
        latents = distribution.sample(generator) if sample else distribution.mode()
        return latents * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, 4, h, w)`` -> images ``(B, C, 8h, 8w)`` clamped to [0, 1]."""
        decoded = self.vae.decode(latents / self.config.scaling_factor).sample
        return ((decoded + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> AutoencoderOutput:
        """Training pass: a posterior sample is decoded; loss = L1 (in [0, 1] units) + β KL per latent element."""
        distribution = self.posterior(images)
        decoded = self.vae.decode(distribution.sample()).sample
        reconstruction = (decoded + 1) / 2
        l1 = F.l1_loss(reconstruction.float(), images.float())
        kl = distribution.kl().mean() / distribution.mean[0].numel()
        return AutoencoderOutput(reconstruction.clamp(0, 1), l1 + self.config.kl_weight * kl, l1, kl)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors``."""
        return write_pretrained(directory, MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "CXRAutoencoder":
        """Load a ``save_pretrained`` folder; a bad one is a CheckpointError naming the file."""
        return load_pretrained(directory, MODEL_TYPE, AutoencoderConfig, cls)


def build_autoencoder(preset: str, image_size: int, **overrides) -> CXRAutoencoder:
    """A fresh autoencoder from a key of :data:`AUTOENCODER_PRESETS` plus field overrides."""
    if preset not in AUTOENCODER_PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r} (known: {', '.join(AUTOENCODER_PRESETS)})")
    return CXRAutoencoder(AutoencoderConfig(image_size=image_size, **{**AUTOENCODER_PRESETS[preset], **overrides}))
