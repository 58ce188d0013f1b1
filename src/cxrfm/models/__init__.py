"""cxrfm.models: ViT encoder, masked autoencoder and token maskers."""

from cxrfm.models.flops import mae_flops_per_image, vit_flops_per_image
from cxrfm.models.mae import (
    MAE_PRESETS,
    MAEConfig,
    MAEOutput,
    MaskedAutoencoder,
    mae_config,
    patchify,
    unpatchify,
)
from cxrfm.models.masking import (
    ContextAwareMasker,
    MaskingResult,
    RandomMasker,
    random_masking,
    reference_chest_rectangle,
)
from cxrfm.models.vit import VIT_PRESETS, VisionTransformer, ViTConfig, vit_config

__all__ = [
    "MAE_PRESETS",
    "VIT_PRESETS",
    "ContextAwareMasker",
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoencoder",
    "MaskingResult",
    "RandomMasker",
    "ViTConfig",
    "VisionTransformer",
    "mae_config",
    "mae_flops_per_image",
    "patchify",
    "random_masking",
    "reference_chest_rectangle",
    "unpatchify",
    "vit_config",
    "vit_flops_per_image",
]
