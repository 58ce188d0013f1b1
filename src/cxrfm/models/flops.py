"""Analytic matmul FLOPs for the ViT encoder and the masked autoencoder (for MFU in benchmarks).

Counting rules: one multiply-add = 2 FLOPs; only matrix products and convolutions are counted
(LayerNorm, softmax, GELU, residual adds and the loss are O(T·D) and ignored, as in the usual
``6 · params · tokens`` style estimates). Attention counts the ``Q·Kᵀ`` scores and the
``scores·V`` product over all heads (``2 · T² · D`` each). Training costs forward × 3 (the
backward pass computes gradients for both the inputs and the weights of every product).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: mae.py imports this module
    from cxrfm.models.mae import MAEConfig
    from cxrfm.models.vit import ViTConfig


def block_flops(num_tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``num_tokens`` tokens of width ``dim``."""
    tokens, hidden = num_tokens, int(dim * mlp_ratio)
    qkv = 2 * tokens * dim * 3 * dim
    scores = 2 * tokens * tokens * dim
    weighted_values = 2 * tokens * tokens * dim
    projection = 2 * tokens * dim * dim
    mlp = 2 * tokens * dim * hidden * 2
    return float(qkv + scores + weighted_values + projection + mlp)


def patch_embed_flops(config: "ViTConfig") -> float:
    """Forward FLOPs of embedding all ``N`` patches (MAE embeds every patch, then drops)."""
    patch_h, patch_w = config.patch_size
    dim, patches = config.embed_dim, config.num_patches
    # The linear patch projection, and the stem's first conv (16 sub-patches of ph/4 × pw/4 per
    # patch), both touch each input pixel once per output channel.
    first = 2 * patches * patch_h * patch_w * config.in_channels * dim
    if config.patch_embed == "linear":
        return float(first)
    conv4x4 = 2 * patches * 16 * dim * dim
    projection_1x1 = 2 * patches * dim * dim
    return float(first + conv4x4 + projection_1x1)


def vit_flops_per_image(config: "ViTConfig", num_tokens: int | None = None) -> float:
    """Forward FLOPs of the encoder on one image keeping ``num_tokens`` patches (default all)."""
    kept = config.num_patches if num_tokens is None else num_tokens
    sequence = config.num_prefix_tokens + kept
    return patch_embed_flops(config) + config.depth * block_flops(sequence, config.embed_dim, config.mlp_ratio)


def mae_flops_per_image(config: "MAEConfig", num_keep: int, *, training: bool = True) -> float:
    """Matmul FLOPs of one masked-autoencoder step on one image.

    Encoder on ``P + K`` tokens (``P`` = class token), decoder embed on ``P + K``, decoder blocks
    on ``P + N``, prediction head on ``N`` patch tokens. ``training=True`` returns forward × 3
    (forward + backward); ``False`` the forward alone.
    """
    encoder = config.encoder
    prefix, patches = encoder.num_prefix_tokens, encoder.num_patches
    decoder_dim = config.decoder_embed_dim
    pixels_per_patch = encoder.patch_size[0] * encoder.patch_size[1] * encoder.in_channels
    forward = vit_flops_per_image(encoder, num_keep)
    forward += 2 * (prefix + num_keep) * encoder.embed_dim * decoder_dim
    forward += config.decoder_depth * block_flops(prefix + patches, decoder_dim, encoder.mlp_ratio)
    forward += 2 * patches * decoder_dim * pixels_per_patch
    return 3.0 * forward if training else forward
