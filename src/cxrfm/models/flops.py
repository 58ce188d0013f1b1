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
    from cxrfm.models.diffusion.uvit import UViTConfig
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


def uvit_flops_per_image(config: "UViTConfig", context_length: int | None = None) -> float:
    """Forward FLOPs of one U-ViT denoiser pass on one latent (classifier-free guidance doubles it).

    ``T = 1 + L_c + N`` tokens (time, ``context_length`` context tokens, default the config's, and
    ``N`` patches) through ``depth + 1`` blocks; plus the patch embedding, the context embedding
    ``Linear(context_dim -> D)``, the ``depth // 2`` skip fusions ``Linear(2D -> D)`` on all
    tokens, the head ``Linear(D -> p²·C)`` on the ``N`` patch tokens and the final 3x3 conv.
    The time token is a parameter-free sinusoid (no FLOPs counted).
    """
    dim, patches = config.embed_dim, config.num_patches
    length = config.context_length if context_length is None else context_length
    tokens = 1 + length + patches
    pixels_per_patch = config.patch_size**2 * config.in_channels
    patch_embed = 2 * patches * pixels_per_patch * dim
    context_embed = 2 * length * config.context_dim * dim
    blocks = (config.depth + 1) * block_flops(tokens, dim, config.mlp_ratio)
    skip_linears = (config.depth // 2) * 2 * tokens * (2 * dim) * dim
    head = 2 * patches * dim * pixels_per_patch
    final_conv = 2 * config.latent_size**2 * config.in_channels * config.in_channels * 9 if config.conv_out else 0
    return float(patch_embed + context_embed + skip_linears + head + final_conv) + blocks
