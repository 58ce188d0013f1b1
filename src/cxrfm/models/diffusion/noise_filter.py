"""LNFS's two latent networks (Diff-CXR, shared/papers/003 Sec. II-B and Fig. 3).

The latent noise filtering strategy works on autoencoder latents ``(B, C, h, w)`` (Diff-CXR's KL
autoencoder: ``C = 4``, ``h, w = H/8, W/8``):

* :class:`LatentReconstructor` is the "U-shaped autoencoder" of manifold modelling: trained with
  MSE on the *typical normal* latents only, its reconstruction error scores every item. It has
  **no skip connections across the bottleneck**. A U-Net's skips would hand the input straight
  to the decoder, so it could learn to copy and would reconstruct anomalies as well as normals;
  the bottleneck is the only path, which forces it to keep what is common to normal latents.
  "U-shaped" is the contracting-expanding shape (as in Fig. 3), not U-Net skips.
* :class:`LatentDiscriminator` is the latent noise discriminator of explicit supervision: cascaded
  conv -> GroupNorm -> activation blocks, adaptive average pooling and a linear classifier giving
  one logit per latent (noisy = 1), trained with BCE on typical normal vs typical noisy items.

Both take tensors only (clustering, thresholds and data live in the recipe and the pipeline) and
accept any ``h, w``: the reconstructor pads its input up to a multiple of ``2 ** depth`` and crops
its output back. Both save as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.models.pretrained import load_pretrained, write_pretrained
from cxrfm.models.vit import check_positive_int

RECONSTRUCTOR_TYPE = "lnfs-reconstructor"
DISCRIMINATOR_TYPE = "lnfs-discriminator"


def _check_groups(config, channels: int) -> None:
    """GroupNorm needs ``norm_groups`` to divide every stage's width (``hidden_channels * 2**i``)."""
    if channels % config.norm_groups:
        raise ValueError(f"norm_groups {config.norm_groups} must divide hidden_channels {channels}")


@dataclass
class LatentReconstructorConfig:
    """``in_channels``: latent channels (Diff-CXR's autoencoder: 4); ``hidden_channels``: width of
    the first stage, doubled at each of the ``depth`` stride-2 stages; ``bottleneck_channels``:
    channels at the ``(h / 2**depth, w / 2**depth)`` bottleneck, the narrow code that keeps the
    network from learning the identity; ``norm_groups``: GroupNorm groups (batch-size free)."""

    in_channels: int = 4
    hidden_channels: int = 32
    depth: int = 2
    bottleneck_channels: int = 8
    norm_groups: int = 8

    def __post_init__(self) -> None:
        for name in ("in_channels", "hidden_channels", "depth", "bottleneck_channels", "norm_groups"):
            check_positive_int(self, name)
        if self.depth > 6:
            raise ValueError(f"depth must be <= 6 (a 2**depth-times smaller bottleneck), got {self.depth}")
        _check_groups(self, self.hidden_channels)


@dataclass
class LatentDiscriminatorConfig:
    """``in_channels``: latent channels; ``hidden_channels``: width of the first block, doubled at
    each later one; ``depth``: conv -> norm -> activation blocks (all but the first stride 2);
    ``norm_groups``: GroupNorm groups; ``dropout``: before the linear classifier."""

    in_channels: int = 4
    hidden_channels: int = 32
    depth: int = 3
    norm_groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "hidden_channels", "depth", "norm_groups"):
            check_positive_int(self, name)
        if self.depth > 6:
            raise ValueError(f"depth must be <= 6, got {self.depth}")
        _check_groups(self, self.hidden_channels)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


def conv_block(in_channels: int, out_channels: int, groups: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv -> GroupNorm -> SiLU (``stride`` 2 halves ``h, w``)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                         nn.GroupNorm(groups, out_channels), nn.SiLU())


def up_block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """Nearest 2x upsampling -> 3x3 conv -> GroupNorm -> SiLU (no checkerboard of a transposed conv)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_block(in_channels, out_channels, groups))


def _check_latents(latents: torch.Tensor, channels: int) -> None:
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"latents must be (B, {channels}, h, w), got {tuple(latents.shape)}")


class _Pretrained:
    """``save_pretrained`` / ``from_pretrained`` shared by the two networks."""

    MODEL_TYPE: str
    CONFIG_CLASS: type

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors``."""
        return write_pretrained(directory, self.MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        """Load a ``save_pretrained`` folder; a bad one is a CheckpointError naming the file."""
        return load_pretrained(directory, cls.MODEL_TYPE, cls.CONFIG_CLASS, cls)


class LatentReconstructor(_Pretrained, nn.Module):
    """Latents ``(B, C, h, w)`` -> their reconstruction ``(B, C, h, w)`` through a narrow bottleneck.

    Encoder: a stem block, then ``depth`` stride-2 blocks (width doubling), then a 1x1 conv to
    ``bottleneck_channels``. Decoder: the mirror image with nearest upsampling, then a 1x1 conv back
    to ``C``. No skip connections (module docstring: with them it could copy anomalies through).
    """

    MODEL_TYPE = RECONSTRUCTOR_TYPE
    CONFIG_CLASS = LatentReconstructorConfig

    def __init__(self, config: LatentReconstructorConfig):
        super().__init__()
        self.config = config
        groups, widths = config.norm_groups, [config.hidden_channels * 2**i for i in range(config.depth + 1)]
        down = [conv_block(config.in_channels, widths[0], groups)]
        down += [conv_block(widths[i], widths[i + 1], groups, stride=2) for i in range(config.depth)]
        self.encoder = nn.Sequential(*down, nn.Conv2d(widths[-1], config.bottleneck_channels, 1))
        up = [conv_block(config.bottleneck_channels, widths[-1], groups)]
        up += [up_block(widths[i + 1], widths[i], groups) for i in reversed(range(config.depth))]
        self.decoder = nn.Sequential(*up, nn.Conv2d(widths[0], config.in_channels, 1))

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> bottleneck code ``(B, bottleneck_channels, ceil(h / 2**depth), ceil(w / 2**depth))``."""
        _check_latents(latents, self.config.in_channels)
        multiple = 2**self.config.depth
        height, width = latents.shape[-2:]
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:  # replicate: zeros would be an edge the decoder has to learn to draw
            latents = F.pad(latents, (0, pad_w, 0, pad_h), mode="replicate")
        return self.encoder(latents)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> reconstruction ``(B, C, h, w)``."""
        height, width = latents.shape[-2:]
        return self.decoder(self.encode(latents))[..., :height, :width]

    @torch.no_grad()
    def reconstruction_error(self, latents: torch.Tensor) -> torch.Tensor:
        """Mean squared error per item: ``(B, C, h, w)`` -> ``(B,)`` float32 (LNFS's manifold score)."""
        return (self(latents).float() - latents.float()).pow(2).mean(dim=(1, 2, 3))


class LatentDiscriminator(_Pretrained, nn.Module):
    """Latents ``(B, C, h, w)`` -> noisy-vs-normal logits ``(B,)`` (sigmoid: probability of noisy)."""

    MODEL_TYPE = DISCRIMINATOR_TYPE
    CONFIG_CLASS = LatentDiscriminatorConfig

    def __init__(self, config: LatentDiscriminatorConfig):
        super().__init__()
        self.config = config
        groups, widths = config.norm_groups, [config.hidden_channels * 2**i for i in range(config.depth)]
        blocks = [conv_block(config.in_channels, widths[0], groups)]
        blocks += [conv_block(widths[i], widths[i + 1], groups, stride=2) for i in range(config.depth - 1)]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(widths[-1], 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> logits ``(B,)``."""
        _check_latents(latents, self.config.in_channels)
        pooled = self.pool(self.features(latents)).flatten(1)  # (B, hidden * 2**(depth-1))
        return self.classifier(self.dropout(pooled)).squeeze(1)
