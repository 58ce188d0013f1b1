"""Masked autoencoder (MAE) for single-channel chest X-rays, including the HD X-ray MAE setup.

The forward pass is split into MAE's named stages so the training loop, figures and tests can
use each one: ``forward_encoder`` (visible tokens only) -> ``forward_decoder`` (mask tokens
re-inserted, fixed sin-cos positions) -> ``forward_loss`` (pixel MSE on masked patches). Which
tokens are visible is decided outside the model by a masker (``cxrfm.models.masking``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.layers import Block, init_transformer_weights, sincos_pos_embed_2d
from cxrfm.models.masking import MaskingResult
from cxrfm.models.pretrained import (
    build_and_load,
    config_from_record,
    read_config_record,
    read_weights,
    write_pretrained,
)
from cxrfm.models.vit import ViTConfig, VisionTransformer, check_positive_int, resample_pos_embed_state, vit_config


@dataclass
class MAEConfig:
    """Encoder architecture plus the MAE decoder.

    ``norm_pix_loss`` (MAE's per-patch normalised target) is off by default: users report that
    MAE reconstructions of CXRs fail with it on (facebookresearch/mae#190), the HD X-ray MAE
    reference trains without it, and CXRs have many near-uniform background patches whose
    variance is ~0, so normalising them amplifies noise into the target.
    """

    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = False

    def __post_init__(self) -> None:
        for name in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            check_positive_int(self, name)
        if not isinstance(self.norm_pix_loss, bool):
            raise ValueError(f"norm_pix_loss must be true or false, got {self.norm_pix_loss!r}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by decoder_num_heads "
                f"{self.decoder_num_heads}"
            )
        if self.decoder_embed_dim % 4:
            raise ValueError(f"decoder_embed_dim must be divisible by 4 (sin-cos), got {self.decoder_embed_dim}")


MAE_PRESETS: dict[str, MAEConfig] = {
    # HD X-ray MAE: ViT-L/64 at 1280² with the reference stem; 512-wide 8-block decoder
    # predicting 64·64·1 = 4096 pixels per patch.
    "hd-mae-vitl-1280": MAEConfig(vit_config("vit-l-64-1280"), 512, 8, 16),
    "mae-vitb-16-224": MAEConfig(vit_config("vit-b-16-224"), 512, 8, 16),
    # medical_mae's CXR setting: ViT-S with a 2-block decoder.
    "mae-vits-16-224": MAEConfig(vit_config("vit-s-16-224"), 512, 2, 16),
    "mae-vitb-32-512": MAEConfig(vit_config("vit-b-32-512"), 512, 8, 16),
    "mae-tiny-cpu": MAEConfig(vit_config("vit-tiny-cpu"), 64, 2, 4),
    "mae-small-cpu": MAEConfig(vit_config("vit-small-cpu"), 128, 4, 4),
}


def mae_config(name: str, **overrides) -> MAEConfig:
    """A copy of preset ``name``; overrides may name MAE fields or encoder fields."""
    if name not in MAE_PRESETS:
        raise ConfigError("model.preset", f"unknown MAE preset {name!r} (known: {', '.join(MAE_PRESETS)})")
    return _with_overrides(MAE_PRESETS[name], overrides)


def _with_overrides(config: MAEConfig, overrides: dict) -> MAEConfig:
    """Route each override to the MAE config or, when it is an encoder field, to the encoder."""
    mae_fields = {f.name for f in dataclasses.fields(MAEConfig)}
    vit_fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - mae_fields - vit_fields)
    if unknown:
        raise ConfigError(unknown[0], "not a MAEConfig or ViTConfig field")
    encoder_overrides = {k: v for k, v in overrides.items() if k in vit_fields and k not in mae_fields}
    mae_overrides = {k: v for k, v in overrides.items() if k in mae_fields}
    encoder = dataclasses.replace(mae_overrides.pop("encoder", config.encoder), **encoder_overrides)
    return dataclasses.replace(config, encoder=encoder, **mae_overrides)


@dataclass
class MAEOutput:
    """``loss``: scalar; ``pred``: ``(B, N, ph·pw·C)`` decoder output; ``mask``: ``(B, N)`` 1 = masked."""

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


def patchify(images: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, N, ph·pw·C)``, patches row-major, pixels in ``(ph, pw, c)`` order (MAE)."""
    height, width = images.shape[-2:]
    patch_h, patch_w = patch_size
    if height % patch_h or width % patch_w:
        raise ValueError(f"image size {(height, width)} is not divisible by patch_size {tuple(patch_size)}")
    return rearrange(images, "b c (gh ph) (gw pw) -> b (gh gw) (ph pw c)", ph=patch_h, pw=patch_w)


def unpatchify(
    patches: torch.Tensor, patch_size: tuple[int, int], grid: tuple[int, int], channels: int = 1
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, gh·gw, ph·pw·C)`` -> ``(B, C, gh·ph, gw·pw)``."""
    grid_h, grid_w = grid
    if patches.shape[1] != grid_h * grid_w:
        raise ValueError(f"{patches.shape[1]} patches do not fill a {grid_h}×{grid_w} grid")
    return rearrange(
        patches, "b (gh gw) (ph pw c) -> b c (gh ph) (gw pw)",
        gh=grid_h, gw=grid_w, ph=patch_size[0], pw=patch_size[1], c=channels,
    )


class MaskedAutoencoder(nn.Module):
    """ViT encoder on the visible patches + lightweight transformer decoder over all patches.

    Images are ``(B, C, H, W)`` in ``[0, 1]`` (C = 1); ``N`` patches, ``K`` kept, ``P`` = 1 class
    token (0 without one), ``D`` encoder width, ``Dd`` decoder width.
    """

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        encoder_config = config.encoder
        decoder_dim = config.decoder_embed_dim
        self.encoder = VisionTransformer(encoder_config)
        self.decoder_embed = nn.Linear(encoder_config.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", self._decoder_sincos(encoder_config.grid_size), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, config.decoder_num_heads, encoder_config.mlp_ratio, True, 0.0, encoder_config.norm_eps)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=encoder_config.norm_eps)
        pixels_per_patch = encoder_config.patch_size[0] * encoder_config.patch_size[1] * encoder_config.in_channels
        self.decoder_pred = nn.Linear(decoder_dim, pixels_per_patch)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # The encoder initialised itself; apply MAE's init to the decoder modules only.
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def _decoder_sincos(self, grid: tuple[int, int]) -> torch.Tensor:
        patches = sincos_pos_embed_2d(self.config.decoder_embed_dim, grid)
        prefix = torch.zeros(self.config.encoder.num_prefix_tokens, self.config.decoder_embed_dim)
        return torch.cat([prefix, patches], dim=0).unsqueeze(0)  # (1, P + N, Dd)

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.config.encoder.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.config.grid_size

    @property
    def num_patches(self) -> int:
        return self.encoder.config.num_patches

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, N, ph·pw·C)``."""
        return patchify(images, self.patch_size)

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``(B, N, ph·pw·C)`` -> ``(B, C, H, W)``; ``grid`` defaults to the model's."""
        return unpatchify(patches, self.patch_size, grid or self.grid_size, self.config.encoder.in_channels)

    def forward_encoder(self, images: torch.Tensor, masking: MaskingResult) -> torch.Tensor:
        """``(B, C, H, W)`` -> latent ``(B, P + K, D)``: the encoder sees only the kept patches."""
        return self.encoder.forward_features(images, masking.ids_keep)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, P + K, D)`` + ``ids_restore (B, N)`` -> predicted pixels ``(B, N, ph·pw·C)``."""
        prefix_count = self.config.encoder.num_prefix_tokens
        tokens = self.decoder_embed(latent)  # (B, P + K, Dd)
        prefix, visible = tokens[:, :prefix_count], tokens[:, prefix_count:]
        batch, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, num_patches - visible.shape[1], -1)
        shuffled = torch.cat([visible, mask_tokens], dim=1)  # (B, N, Dd): kept first, as masked
        index = ids_restore.unsqueeze(-1).expand(-1, -1, shuffled.shape[-1])
        patches = torch.gather(shuffled, 1, index)  # back in grid order
        tokens = torch.cat([prefix, patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            if self.encoder.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        tokens = self.decoder_norm(tokens)
        return self.decoder_pred(tokens[:, prefix_count:])  # the class token predicts nothing

    def target_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets ``(B, N, ph·pw·C)``: pixels, or per-patch normalised with norm-pix."""
        target = self.patchify(images)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only.

        Args:
            images: ``(B, C, H, W)``; pred: ``(B, N, ph·pw·C)``; mask: ``(B, N)`` 1 = masked.
        """
        per_patch = ((pred.float() - self.target_patches(images).float()) ** 2).mean(dim=-1)  # (B, N)
        mask = mask.to(per_patch.dtype)
        # clamp: a batch with nothing masked has zero loss rather than 0/0.
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, images: torch.Tensor, masking: MaskingResult) -> MAEOutput:
        latent = self.forward_encoder(images, masking)
        pred = self.forward_decoder(latent, masking.ids_restore)
        return MAEOutput(loss=self.forward_loss(images, pred, masking.mask), pred=pred, mask=masking.mask)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, masking: MaskingResult) -> torch.Tensor:
        """Images ``(B, C, H, W)`` with masked patches replaced by the prediction (visible ones
        pasted back from the input), clamped to ``[0, 1]`` for figures."""
        pred = self.forward_decoder(self.forward_encoder(images, masking), masking.ids_restore)
        target = self.patchify(images)
        if self.config.norm_pix_loss:
            # Undo the per-patch normalisation using each patch's true statistics, as MAE's demo does.
            pred = pred * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        mask = masking.mask.unsqueeze(-1).to(pred.dtype)
        return self.unpatchify(pred * mask + target * (1.0 - mask)).clamp(0.0, 1.0)

    def masked_images(self, images: torch.Tensor, mask: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
        """``(B, C, H, W)`` with removed patches set to ``fill`` — what the encoder saw, for figures."""
        keep = (1.0 - mask).unsqueeze(-1).to(images.dtype)
        return self.unpatchify(self.patchify(images) * keep + fill * (1.0 - keep))

    def resize_pos_embed(self, grid: tuple[int, int]) -> None:
        """Move encoder and decoder to a new patch grid (see ``VisionTransformer.resize_pos_embed``)."""
        self.encoder.resize_pos_embed(grid)
        self.config = dataclasses.replace(self.config, encoder=self.encoder.config)
        self.decoder_pos_embed = self._decoder_sincos(self.encoder.config.grid_size).to(self.decoder_pos_embed)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (encoder and decoder)."""
        return write_pretrained(directory, "mae", self.config, self)

    def save_encoder(self, directory: str | Path) -> Path:
        """Write the encoder alone, loadable with ``VisionTransformer.from_pretrained``."""
        return self.encoder.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "MaskedAutoencoder":
        """Load a ``save_pretrained`` folder; overrides name MAE or encoder fields (e.g. ``image_size``).

        Raises:
            CheckpointError: naming the file (and field) of a missing, malformed or mismatched folder.
        """
        record = read_config_record(directory)
        model_type = record.pop("model_type")
        if model_type != "mae":
            raise CheckpointError(directory, f"model_type {model_type!r} is not a masked-autoencoder checkpoint")
        saved = config_from_record(MAEConfig, record, directory)
        try:
            config = _with_overrides(saved, overrides)
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(directory, f"bad override: {exc}") from None
        state = read_weights(directory)
        resample_pos_embed_state(state, "encoder.pos_embed", saved.encoder, config.encoder)
        return build_and_load(directory, lambda: cls(config), state, record)
