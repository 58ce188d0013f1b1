"""Vision Transformer encoder for single-channel chest X-rays, at any ``(H, W)`` and patch grid.

The encoder is used twice: inside the masked autoencoder (it then sees only the ``K`` kept
tokens) and on its own downstream (report generation, disease prediction), loaded with
``VisionTransformer.from_pretrained(dir, image_size=(384, 384))`` from either an encoder folder
or a whole-MAE folder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.layers import (
    Block,
    ConvStem,
    PatchEmbed,
    init_transformer_weights,
    interpolate_pos_embed,
    sincos_pos_embed_2d,
)
from cxrfm.models.pretrained import (
    CONFIG_NAME,
    build_and_load,
    config_from_record,
    read_config_record,
    read_weights,
    write_pretrained,
)

logger = logging.getLogger(__name__)


@dataclass
class ViTConfig:
    """Architecture of a :class:`VisionTransformer`. Sizes are ``(H, W)`` tuples.

    ``patch_embed="conv_stem"`` is the HD X-ray MAE reference stem (see ``layers.ConvStem``);
    ``"linear"`` the usual one-conv patch projection. ``pos_embed="sincos"`` is fixed (MAE), and
    regenerated for any grid; ``"learned"`` is trained and bicubic-resampled for a new grid.
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    in_channels: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_embed: Literal["linear", "conv_stem"] = "linear"
    pos_embed: Literal["sincos", "learned"] = "sincos"
    class_token: bool = True
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # JSON/YAML give lists; keep sizes as tuples so configs compare and hash cleanly.
        self.image_size = _pair(self.image_size, "image_size")
        self.patch_size = _pair(self.patch_size, "patch_size")
        # Checked before anything divides by them or sizes a tensor with them.
        for name in ("in_channels", "embed_dim", "depth", "num_heads"):
            check_positive_int(self, name)
        check_number(self, "mlp_ratio", low=0.0, low_open=True)
        check_number(self, "drop_path_rate", low=0.0, high=1.0)
        check_number(self, "norm_eps", low=0.0, low_open=True)
        for name in ("qkv_bias", "class_token", "grad_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.patch_embed not in ("linear", "conv_stem"):
            raise ValueError(f"patch_embed must be 'linear' or 'conv_stem', got {self.patch_embed!r}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves no hidden unit at embed_dim {self.embed_dim}")
        image_h, image_w = self.image_size
        patch_h, patch_w = self.patch_size
        if image_h % patch_h or image_w % patch_w:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"sincos position embeddings need embed_dim divisible by 4, got {self.embed_dim}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(gh, gw)`` = ``(H / ph, W / pw)``."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        """``N = gh · gw``."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (1 with a class token, else 0)."""
        return 1 if self.class_token else 0


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        value = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be two positive integers (H, W), got {value!r}") from None
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{name} must be two positive integers (H, W), got {value}")
    return value


def check_positive_int(config, name: str) -> None:
    """Raise a ValueError naming field ``name`` of ``config`` unless it is an integer >= 1."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_number(config, name: str, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False) -> None:
    """Raise a ValueError naming field ``name`` unless it is a finite number in the given range."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


VIT_PRESETS: dict[str, ViTConfig] = {
    # The HD X-ray MAE encoder: 1280², 64×64 patches (20×20 = 400 tokens), ViT-L, reference stem.
    "vit-l-64-1280": ViTConfig(
        image_size=(1280, 1280), patch_size=(64, 64), embed_dim=1024, depth=24, num_heads=16,
        patch_embed="conv_stem",
    ),
    "vit-l-16-384": ViTConfig(image_size=(384, 384), patch_size=(16, 16), embed_dim=1024, depth=24, num_heads=16),
    "vit-l-16-224": ViTConfig(image_size=(224, 224), patch_size=(16, 16), embed_dim=1024, depth=24, num_heads=16),
    "vit-b-16-224": ViTConfig(image_size=(224, 224), patch_size=(16, 16), embed_dim=768, depth=12, num_heads=12),
    "vit-s-16-224": ViTConfig(image_size=(224, 224), patch_size=(16, 16), embed_dim=384, depth=12, num_heads=6),
    "vit-b-32-512": ViTConfig(image_size=(512, 512), patch_size=(32, 32), embed_dim=768, depth=12, num_heads=12),
    # Tiny encoders for CPU runs on the real data and for tests.
    "vit-tiny-cpu": ViTConfig(image_size=(128, 128), patch_size=(16, 16), embed_dim=64, depth=4, num_heads=4),
    "vit-small-cpu": ViTConfig(image_size=(256, 256), patch_size=(16, 16), embed_dim=192, depth=6, num_heads=3),
}


def vit_config(name: str, **overrides) -> ViTConfig:
    """A copy of preset ``name`` with ``overrides`` applied, e.g. ``vit_config("vit-l-64-1280", patch_embed="linear")``."""
    if name not in VIT_PRESETS:
        raise ConfigError("model.preset", f"unknown ViT preset {name!r} (known: {', '.join(VIT_PRESETS)})")
    return dataclasses.replace(VIT_PRESETS[name], **overrides)


class VisionTransformer(nn.Module):
    """ViT encoder: patch embedding + position embedding -> ``depth`` pre-norm blocks -> LayerNorm.

    Input images are ``(B, C, H, W)`` with ``(H, W) == config.image_size`` (C = 1 for CXRs).
    Token sequences are ``(B, T, D)``: the class token (if any) first, then patch tokens.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        stem = ConvStem if config.patch_embed == "conv_stem" else PatchEmbed
        self.patch_embed = stem(config.patch_size, config.in_channels, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if config.class_token else None
        num_positions = config.num_prefix_tokens + config.num_patches
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, config.embed_dim))
        else:
            # Not persistent: regenerated from the config, so checkpoints load at any grid.
            self.register_buffer("pos_embed", self._sincos(config.grid_size), persistent=False)
        # Stochastic depth grows linearly with depth (plain Python: works under a meta device too).
        drop_rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, rate, config.norm_eps)
            for rate in drop_rates
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.grad_checkpointing = config.grad_checkpointing
        self.init_weights()

    def init_weights(self) -> None:
        """MAE init: xavier Linear, LayerNorm 1/0, patch embed as Linear, cls/learned pos N(0, 0.02)."""
        self.apply(init_transformer_weights)
        self.patch_embed.init_weights()
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)

    def _sincos(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, P + N, D)`` fixed embeddings; the class token's slot is zero, as in MAE."""
        patches = sincos_pos_embed_2d(self.config.embed_dim, grid)
        prefix = torch.zeros(self.config.num_prefix_tokens, self.config.embed_dim)
        return torch.cat([prefix, patches], dim=0).unsqueeze(0)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    def check_image_size(self, images: torch.Tensor) -> None:
        """Raise a ValueError naming both sizes when ``images`` do not match the config."""
        expected = (self.config.in_channels, *self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(images.shape)}; resize the images or the encoder (resize_pos_embed / "
                f"from_pretrained(..., image_size=...))"
            )

    def embed(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Token sequence before the blocks.

        Args:
            images: ``(B, C, H, W)``.
            ids_keep: ``(B, K)`` patch indices to keep (masked autoencoding), or None for all.

        Returns:
            ``(B, P + K, D)`` (or ``(B, P + N, D)``); position embeddings are added *before* the
            kept patches are gathered, so every token keeps its own grid position.
        """
        self.check_image_size(images)
        tokens = self.patch_embed(images) + self.pos_embed[:, self.num_prefix_tokens :]  # (B, N, D)
        if ids_keep is not None:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, dim=1, index=index)  # (B, K, D)
        if self.cls_token is None:
            return tokens
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_blocks(
        self,
        tokens: torch.Tensor,
        start: int = 0,
        end: int | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``blocks[start:end]`` on ``(B, T, D)`` tokens (no final norm).

        VTB-style fusion runs ``forward_blocks(tokens, 0, depth - 1)``, appends its label tokens,
        then ``forward_blocks(joint, depth - 1)`` and ``self.norm``.
        """
        for block in self.blocks[start:end]:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Recompute activations in backward: ~30 % more compute for far less memory.
                tokens = checkpoint(block, tokens, attn_mask, use_reentrant=False)
            else:
                tokens = block(tokens, attn_mask)
        return tokens

    def forward_features(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` (+ optional ``ids_keep (B, K)``) -> normalised tokens ``(B, P + K|N, D)``."""
        return self.norm(self.forward_blocks(self.embed(images, ids_keep)))

    def forward(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(images, ids_keep)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.config = dataclasses.replace(self.config, grad_checkpointing=enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimisers conventionally exempt from weight decay (plus biases/norms)."""
        return {name for name in ("cls_token", "pos_embed") if isinstance(getattr(self, name), nn.Parameter)}

    def resize_pos_embed(self, grid: tuple[int, int]) -> None:
        """Adapt the encoder in place to a new ``(gh, gw)`` patch grid (image size = grid · patch).

        Sin-cos embeddings are regenerated exactly; learned ones are bicubic-interpolated with the
        class token's embedding kept (mae#77: fine-tuning at a new resolution needs this).
        """
        grid = _pair(grid, "grid")
        old_grid = self.config.grid_size
        image_size = (grid[0] * self.config.patch_size[0], grid[1] * self.config.patch_size[1])
        self.config = dataclasses.replace(self.config, image_size=image_size)
        if isinstance(self.pos_embed, nn.Parameter):
            resized = interpolate_pos_embed(self.pos_embed.data, old_grid, grid, self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(resized)
        else:
            self.pos_embed = self._sincos(grid).to(self.pos_embed)
        logger.info("resized position embeddings from grid %s to %s", old_grid, grid)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (loadable without the MAE)."""
        return write_pretrained(directory, "vit", self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "VisionTransformer":
        """Load an encoder folder, or the encoder inside a masked-autoencoder folder.

        ``overrides`` replace config fields, e.g. ``image_size=(384, 384)`` (position embeddings
        are resampled), ``drop_path_rate=0.1`` or ``grad_checkpointing=True``.
        Raises:
            CheckpointError: naming the file (and field) of a missing, malformed or mismatched folder.
        """
        record = read_config_record(directory)
        model_type = record.pop("model_type")
        if model_type == "mae":
            fields, prefix = record.get("encoder"), "encoder"
            if not isinstance(fields, dict):
                raise CheckpointError(
                    Path(directory) / CONFIG_NAME, f"field 'encoder' must hold the encoder's config fields, got {fields!r}"
                )
        elif model_type == "vit":
            fields, prefix = record, ""
        else:
            raise CheckpointError(directory, f"model_type {model_type!r} is not a ViT or MAE checkpoint")
        saved = config_from_record(ViTConfig, fields, directory, prefix)
        try:
            config = dataclasses.replace(saved, **overrides)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(directory, f"bad override: {exc}") from None
        state = read_weights(directory)
        if prefix:
            state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        resample_pos_embed_state(state, "pos_embed", saved, config)
        return build_and_load(directory, lambda: cls(config), state, fields)


def resample_pos_embed_state(state: dict[str, torch.Tensor], key: str, saved: ViTConfig, config: ViTConfig) -> None:
    """Resample learned ``state[key]`` in place from ``saved``'s patch grid to ``config``'s.

    A tensor whose shape does not fit ``saved`` is left alone: the weight check then names it.
    """
    if key not in state or config.pos_embed != "learned":
        return
    expected = (1, saved.num_prefix_tokens + saved.num_patches, saved.embed_dim)
    if tuple(state[key].shape) == expected and config.num_prefix_tokens == saved.num_prefix_tokens:
        state[key] = interpolate_pos_embed(state[key], saved.grid_size, config.grid_size, config.num_prefix_tokens)


def build_encoder(
    weights: str | Path | None = None,
    preset: str = "vit-tiny-cpu",
    overrides: dict | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    **changes,
) -> VisionTransformer:
    """The one encoder factory of the recipes: a pretrained folder or a randomly initialised preset.

    Args:
        weights: a cxrfm ViT or MAE folder (its encoder is taken); None builds ``preset``.
        preset: a key of :data:`VIT_PRESETS`, with ``overrides`` (its config fields) applied.
        image_size: ``(H, W)`` to build / resize to (position embeddings are resampled), or None.
        **changes: further config fields for either path, e.g. ``drop_path_rate=0.1``.
    Raises:
        ConfigError: ``model.encoder_overrides`` that the preset does not take.
    """
    if image_size is not None:
        changes["image_size"] = tuple(int(side) for side in image_size)
    if weights is not None:
        return VisionTransformer.from_pretrained(Path(weights).expanduser(), **changes)
    fields = {key: tuple(value) if key in ("image_size", "patch_size") else value for key, value in (overrides or {}).items()}
    try:
        return VisionTransformer(vit_config(preset, **{**fields, **changes}))
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.encoder_overrides", str(exc)) from None
