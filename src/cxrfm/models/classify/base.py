"""What every disease classifier shares: its config, save/load, parameter groups and the loss.

All classifiers map ``images (B, 1, H, W)`` to ``logits (B, K)`` over ``config.label_names`` and
save as ``config.json`` (``model_type: "classifier"``, ``kind``) + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.pretrained import build_and_load, config_from_record, read_config_record, read_weights, write_pretrained
from cxrfm.models.vit import ViTConfig, check_number, check_positive_int, resample_pos_embed_state

MODEL_TYPE = "classifier"
ClassifierKind = Literal["vtb", "linear_probe", "finetune"]

# Learned offsets and tokens: decaying them towards zero only hurts (as in MAE / timm / BEiT).
_NO_DECAY_PARTS = ("pos_embed", "cls_token", "type_embed", "label_embedder")


@dataclass
class ClassifierConfig:
    """A disease classifier on a cxrfm ViT encoder.

    Attributes:
        kind: ``vtb`` (label tokens fused with the image tokens in the last block),
            ``linear_probe`` (frozen encoder, pooled features -> Linear) or ``finetune`` (pooled
            head, whole encoder trained, usually with ``layer_decay`` < 1).
        label_names: the K labels, in logit order.
        encoder: the ViT architecture (weights come from a pretrained encoder folder or random).
        label_embedding: VTB: ``text`` (sentence-encoder embeddings of the label names, fixed) or
            ``learned``. text_model: ``minilm`` or a Hugging Face folder.
        label_embedding_dim: ``E``, the text encoder's width (384 for MiniLM).
        logit_batchnorm: BatchNorm1d over the K logits, as the reference VTB code has. It rescales
            the logits per label, which lets small models leave the constant-prediction plateau
            far sooner (phantoms: train AUROC ~1.0 after 500 steps with it, ~0.55 without).
        pool: pooled heads: ``mean`` of the patch tokens or the ``cls`` token.
        layer_decay: learning rate of encoder layer ``i`` (of ``depth + 1``) scaled by
            ``layer_decay ** (depth + 1 - i)``; 1.0 = the same rate everywhere.
        head_dropout: dropout before the pooled head.
        feature_batchnorm: pooled heads: BatchNorm1d without affine on the pooled features before
            the head (MAE's linear-probe recipe: it standardises features whose scale differs by
            orders of magnitude between encoders). None = on for ``linear_probe`` only.
        frozen_blocks: the patch embedding, class/position embeddings and the first
            ``frozen_blocks`` encoder blocks are frozen (no gradients, always in eval mode): the
            "trunk". Its output can be computed once per image and cached
            (:meth:`ClassifierBase.trunk_tokens`), which makes CPU runs with a pretrained encoder
            cheap. 0 trains everything; ``linear_probe`` freezes the whole encoder regardless; VTB
            always trains its last (fusion) block.
    """

    kind: ClassifierKind = "vtb"
    label_names: tuple[str, ...] = ()
    encoder: ViTConfig = field(default_factory=ViTConfig)
    label_embedding: Literal["text", "learned"] = "text"
    text_model: str = "minilm"
    label_embedding_dim: int = 384
    logit_batchnorm: bool = False
    pool: Literal["mean", "cls"] = "mean"
    layer_decay: float = 1.0
    head_dropout: float = 0.0
    frozen_blocks: int = 0
    feature_batchnorm: bool | None = None

    def __post_init__(self) -> None:
        self.label_names = tuple(self.label_names)
        if not all(isinstance(name, str) and name.strip() for name in self.label_names):
            raise ValueError(f"label_names must be non-empty strings, got {list(self.label_names)}")
        if not self.label_names:
            raise ValueError("a classifier needs at least one label name")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label names repeat: {self.label_names}")
        if isinstance(self.encoder, dict):
            self.encoder = ViTConfig(**self.encoder)
        check_positive_int(self, "label_embedding_dim")
        check_number(self, "head_dropout", low=0.0, high=1.0)
        check_number(self, "layer_decay")
        if isinstance(self.frozen_blocks, bool) or not isinstance(self.frozen_blocks, int):
            raise ValueError(f"frozen_blocks must be an integer, got {self.frozen_blocks!r}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.feature_batchnorm is None:
            self.feature_batchnorm = self.kind == "linear_probe"
        trainable_limit = self.encoder.depth - 1 if self.kind == "vtb" else self.encoder.depth
        if not 0 <= self.frozen_blocks <= trainable_limit:
            raise ValueError(f"frozen_blocks must be in [0, {trainable_limit}] for {self.kind}, got {self.frozen_blocks}")
        if self.pool == "cls" and not self.encoder.class_token:
            raise ValueError("pool 'cls' needs an encoder with a class token")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# kind -> class; filled by each subclass's ``kinds`` as it is defined (see ``__init_subclass__``),
# so loading dispatches on the saved kind without this module importing its subclasses.
_CLASSES_BY_KIND: dict[str, type["ClassifierBase"]] = {}


class ClassifierBase(nn.Module):
    """Save/load, the frozen trunk and parameter groups.

    Subclasses define ``forward_from_trunk(tokens) -> (B, K)``; ``forward`` takes images (or
    precomputed trunk tokens) and returns logits ``(B, K)``. A subclass lists the config kinds it
    implements in ``kinds`` and, when its constructor needs more than ``(config, encoder)``,
    overrides :meth:`build`.
    """

    config: ClassifierConfig
    encoder: nn.Module
    kinds: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for kind in cls.kinds:
            _CLASSES_BY_KIND[kind] = cls

    @classmethod
    def build(cls, config: ClassifierConfig, encoder: nn.Module | None = None, label_embeddings: torch.Tensor | None = None) -> "ClassifierBase":
        """A new classifier of this class (``label_embeddings`` are for the kinds that use them)."""
        return cls(config, encoder=encoder)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.config.label_names

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def num_frozen_blocks(self) -> int:
        """Encoder blocks in the frozen trunk (all of them for a linear probe)."""
        return self.config.encoder.depth if self.config.kind == "linear_probe" else self.config.frozen_blocks

    @property
    def has_frozen_trunk(self) -> bool:
        return self.num_frozen_blocks > 0

    def _frozen_modules(self) -> list[nn.Module]:
        if self.config.kind == "linear_probe":
            return [self.encoder]
        return [self.encoder.patch_embed, *self.encoder.blocks[: self.num_frozen_blocks]]

    def freeze_trunk(self) -> None:
        """Stop gradients into the trunk (call at the end of ``__init__``)."""
        if not self.has_frozen_trunk:
            return
        for module in self._frozen_modules():
            module.requires_grad_(False)
        for name in ("cls_token", "pos_embed"):
            parameter = getattr(self.encoder, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ClassifierBase":
        super().train(mode)
        if self.has_frozen_trunk:
            for module in self._frozen_modules():
                module.eval()  # a frozen trunk never uses drop-path
        return self

    def trunk_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, T, D)``: embedding + the frozen blocks (no gradients when frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.has_frozen_trunk):
            return self.encoder.forward_blocks(self.encoder.embed(images), 0, self.num_frozen_blocks)

    def forward_from_trunk(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor | None = None, trunk_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``images (B, 1, H, W)`` or cached ``trunk_tokens (B, T, D)`` -> logits ``(B, K)``."""
        if (images is None) == (trunk_tokens is None):
            raise ValueError("pass exactly one of images or trunk_tokens")
        if trunk_tokens is None:
            trunk_tokens = self.trunk_tokens(images)
        return self.forward_from_trunk(trunk_tokens)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, K)`` sigmoid probabilities."""
        return torch.sigmoid(self(images))

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (label embeddings included)."""
        return write_pretrained(directory, MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "ClassifierBase":
        """Load any classifier folder (the class follows the saved ``kind``)."""
        return load_classifier(directory, **overrides)

    # ------------------------------------------------------------------------- optimisation
    def encoder_layer_id(self, name: str) -> int:
        """Layer of parameter ``name`` for layer-wise lr decay: 0 = embeddings, ``i + 1`` = block
        ``i``, ``depth + 1`` = the final norm and everything outside the encoder (heads)."""
        depth = self.config.encoder.depth
        if not name.startswith("encoder."):
            return depth + 1
        name = name.removeprefix("encoder.")
        if name.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return depth + 1

    def param_groups(self, weight_decay: float, lr: float, layer_decay: float | None = None) -> list[dict]:
        """AdamW groups over the trainable parameters: per (layer, decay?) with its own peak ``lr``.

        No weight decay on biases, norms, position/type embeddings, tokens and label embeddings.
        Group ``lr`` = ``lr * layer_decay ** (depth + 1 - layer)`` (heads get ``lr``).
        """
        decay_rate = self.config.layer_decay if layer_decay is None else layer_decay
        depth = self.config.encoder.depth
        extra_no_decay = {f"encoder.{name}" for name in getattr(self.encoder, "no_weight_decay", lambda: set())()}
        groups: dict[tuple[int, bool], dict] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            no_decay = (
                parameter.ndim <= 1
                or name.endswith(".bias")
                or name in extra_no_decay
                or any(part in name for part in _NO_DECAY_PARTS)
            )
            layer = self.encoder_layer_id(name)
            group = groups.setdefault(
                (layer, no_decay),
                {
                    "params": [],
                    "param_names": [],
                    "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr": lr * decay_rate ** (depth + 1 - layer),
                    "layer": layer,
                },
            )
            group["params"].append(parameter)
            group["param_names"].append(name)
        # Highest layer first: the loop logs group 0's lr, which is then the heads' (the peak).
        return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[1]))]


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, positive_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy over the scored entries, optionally re-weighted by label frequency.

    Args:
        logits: ``(B, K)``.
        targets: ``(B, K)`` 1 / 0; NaN and -1 (unknown / uncertain) are not scored.
        positive_ratio: ``(K,)`` fraction of positives of each label in the training set, or None.
            Then each positive is weighted ``exp(1 - r_k)`` and each negative ``exp(r_k)``: the
            reference VTB code's ``ratio2weight``, which up-weights the rarer class of each label.

    Returns:
        The weighted sum divided by the number of scored entries (the reference divides by the
        batch size instead, i.e. K times larger; a mean keeps the learning rate independent of K).
    """
    valid = (targets == 0) | (targets == 1)
    clean = torch.where(valid, targets, torch.zeros_like(targets)).to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, clean, reduction="none")
    weights = valid.to(logits.dtype)
    if positive_ratio is not None:
        ratio = positive_ratio.to(device=logits.device, dtype=logits.dtype).unsqueeze(0)
        weights = weights * torch.where(clean == 1, torch.exp(1 - ratio), torch.exp(ratio))
    return (losses * weights).sum() / valid.sum().clamp(min=1)


def load_classifier(directory: str | Path, **overrides) -> ClassifierBase:
    """Load a classifier folder written by ``save_pretrained``; no text encoder is needed.

    ``overrides`` replace encoder fields, e.g. ``image_size=(384, 384)`` (position embeddings are
    then regenerated / resampled as for the ViT).
    """
    record = read_config_record(directory)
    model_type = record.pop("model_type")
    if model_type != MODEL_TYPE:
        raise CheckpointError(directory, f"not a classifier folder (config.json model_type is {model_type!r}, not 'classifier')")
    config = config_from_record(ClassifierConfig, record, directory)
    saved_encoder = config.encoder
    try:
        config = dataclasses.replace(config, encoder=dataclasses.replace(saved_encoder, **overrides))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(directory, f"bad override: {exc}") from None
    state = read_weights(directory)
    resample_pos_embed_state(state, "encoder.pos_embed", saved_encoder, config.encoder)

    def build() -> ClassifierBase:
        # The label-embedding placeholder is overwritten by the saved buffer: no text encoder is loaded.
        placeholder = torch.zeros(config.num_labels, config.label_embedding_dim)
        return classifier_class(config.kind).build(config, label_embeddings=placeholder)

    return build_and_load(directory, build, state, record)


def build_classifier(
    config: ClassifierConfig,
    encoder: nn.Module | None = None,
    label_embeddings: torch.Tensor | None = None,
) -> ClassifierBase:
    """A new classifier of ``config.kind``; ``encoder`` (a pretrained VisionTransformer whose
    config equals ``config.encoder``) replaces the random one."""
    return classifier_class(config.kind).build(config, encoder, label_embeddings)


def classifier_class(kind: str) -> type[ClassifierBase]:
    """The class registered for a config ``kind`` (``vtb``, ``linear_probe``, ``finetune``)."""
    if kind not in _CLASSES_BY_KIND:
        raise ConfigError("model.kind", f"no classifier implements kind {kind!r}; known: {sorted(_CLASSES_BY_KIND)}")
    return _CLASSES_BY_KIND[kind]


def head_init_(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Small head init (timm/MAE fine-tuning: N(0, 0.02)-ish weights, zero bias): start near p = 0.5."""
    nn.init.trunc_normal_(weight, std=0.02)
    if bias is not None:
        nn.init.zeros_(bias)


def check_encoder(encoder: nn.Module, config: ClassifierConfig) -> None:
    if encoder.config != config.encoder:
        raise ValueError(
            f"the given encoder's config differs from config.encoder: {encoder.config} != {config.encoder}"
        )


__all__ = [
    "MODEL_TYPE",
    "ClassifierBase",
    "ClassifierConfig",
    "build_classifier",
    "load_classifier",
    "weighted_bce",
]
