"""R2Gen-style memory-driven Transformer report generator on cxrfm ViT patch features.

Pipeline (R2Gen, Chen et al. EMNLP 2020; reference numbers in shared/notes):

* visual features ``(B, T, D_enc)`` -- ViT tokens of each view (class token included),
  concatenated along ``T`` -- pass ``Linear(D_enc -> 512) -> ReLU -> Dropout(0.5)`` and a 3-layer
  pre-norm Transformer encoder (512 wide, 8 heads, FFN 512, no position embedding: the ViT tokens
  already carry theirs);
* the decoder embeds tokens (``× sqrt(d)`` + sin-cos positions), runs the relational memory over
  them (3 slots × 512, 8 heads, gated) and 3 decoder layers whose three sub-layers (self-attention,
  cross-attention, FFN) each use MCLN conditioned on the memory state of that position;
* a final MCLN and ``Linear(512 -> vocab)``.

Generation runs a cached step (self-attention keys/values, encoder keys/values and the memory
state carried forward, so a new token costs O(1) in the prefix length apart from attending over it)
or, with ``use_cache=False``, R2Gen's own scheme: the whole prefix is re-decoded at every step.
A training step is::

    loss = model.loss(tokens, images=images)    # tokens (B, L) from ReportTokenizer.batch_encode
    loss.backward(); optimizer.step()           # optimizer over model.param_groups(5e-5, 1e-4, 5e-5)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from cxrfm.models.report.tokenizer import ReportTokenizer
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.pretrained import (
    build_and_load,
    config_from_record,
    read_config_record,
    read_weights,
    write_pretrained,
)
from cxrfm.models.report.base import FeedForward, ReportModel, read_saved_tokenizer, report_loss, sincos_positions
from cxrfm.models.report.memory import ConditionalLayerNorm, MultiHeadAttention, RelationalMemory
from cxrfm.models.vit import ViTConfig, VisionTransformer, check_number, check_positive_int

MODEL_TYPE = "report-r2gen"


@dataclass
class ReportGeneratorConfig:
    """Architecture of a :class:`ReportGenerator` (defaults = R2Gen).

    ``encoder`` set: the model owns a ViT and takes images; ``feature_dim`` must then be None or
    equal ``encoder.embed_dim``. ``encoder`` None: the model takes precomputed ``(B, T, feature_dim)``
    features. The relational memory's width is ``d_model`` (R2Gen needs them equal: the memory reads
    token embeddings and MCLN maps memory to ``d_model``). ``max_length`` is the default number of
    tokens generated after ``<bos>`` (``<eos>`` included).

    ``visual_norm: batch`` standardises every visual token position and channel over the training
    images (a BatchNorm over the flattened ``(T * D)`` features of ``num_visual_tokens`` tokens per
    study) before the projection. A deviation from R2Gen, whose ResNet features need none: ViT
    tokens carry a per-position component (the position embedding and what the blocks make of it)
    that is the same for every image. On the main job's phantom-pretrained encoder it is 97.7 % of
    the tokens' energy (the image changes 2.3 %); without the standardisation the decoder learns
    the reports' language and writes one report for every image.
    """

    vocab_size: int
    feature_dim: int | None = None
    encoder: ViTConfig | None = None
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 512
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dropout: float = 0.1
    visual_dropout: float = 0.5
    memory_slots: int = 3
    memory_heads: int = 8
    max_length: int = 60
    visual_norm: Literal["none", "batch"] = "none"
    num_visual_tokens: int | None = None
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "num_encoder_layers", "num_decoder_layers",
                     "memory_slots", "memory_heads", "max_length"):
            check_positive_int(self, name)
        if self.feature_dim is not None:
            check_positive_int(self, "feature_dim")
        for name in ("dropout", "visual_dropout"):
            check_number(self, name, low=0.0, high=1.0)
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a token id (an integer >= 0), got {value!r}")
        if self.encoder is None and self.feature_dim is None:
            raise ValueError("set feature_dim (precomputed features) or encoder (a ViT config)")
        if self.encoder is not None:
            if self.feature_dim not in (None, self.encoder.embed_dim):
                raise ValueError(f"feature_dim {self.feature_dim} != encoder.embed_dim {self.encoder.embed_dim}")
            self.feature_dim = self.encoder.embed_dim
        if self.d_model % self.num_heads or self.d_model % self.memory_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by num_heads and memory_heads")
        if self.visual_norm not in ("none", "batch"):
            raise ValueError(f"visual_norm must be 'none' or 'batch', got {self.visual_norm!r}")
        if self.visual_norm == "batch":
            check_positive_int(self, "num_visual_tokens")
        if self.vocab_size <= max(self.pad_id, self.bos_id, self.eos_id):
            raise ValueError(f"vocab_size {self.vocab_size} does not cover the special token ids")


REPORT_PRESETS: dict[str, dict] = {
    # R2Gen as published (features from a ViT-L: 1024 wide).
    "r2gen": dict(feature_dim=1024),
    # Tiny decoder for CPU tests.
    "r2gen-tiny-cpu": dict(
        feature_dim=32, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=1, num_decoder_layers=2,
        memory_slots=3, memory_heads=4,
    ),
}


def report_generator_config(name: str, vocab_size: int, **overrides) -> ReportGeneratorConfig:
    """Preset ``name`` for a vocabulary of ``vocab_size`` with ``overrides`` applied."""
    if name not in REPORT_PRESETS:
        raise ConfigError("model.preset", f"unknown report preset {name!r} (known: {', '.join(REPORT_PRESETS)})")
    return ReportGeneratorConfig(vocab_size=vocab_size, **{**REPORT_PRESETS[name], **overrides})


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN over the visual tokens."""

    def __init__(self, config: ReportGeneratorConfig):
        super().__init__()
        d = config.d_model
        self.attention_norm = nn.LayerNorm(d, eps=1e-6)
        self.attention = MultiHeadAttention(d, config.num_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-6)
        self.ffn = FeedForward(d, config.d_ff, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, h, mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    """Self-attention, cross-attention and FFN, each behind an MCLN conditioned on the memory."""

    def __init__(self, config: ReportGeneratorConfig):
        super().__init__()
        d, memory_size = config.d_model, config.memory_slots * config.d_model
        self.self_attention_norm = ConditionalLayerNorm(d, memory_size)
        self.self_attention = MultiHeadAttention(d, config.num_heads, config.dropout)
        self.cross_attention_norm = ConditionalLayerNorm(d, memory_size)
        self.cross_attention = MultiHeadAttention(d, config.num_heads, config.dropout)
        self.ffn_norm = ConditionalLayerNorm(d, memory_size)
        self.ffn = FeedForward(d, config.d_ff, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        cross_keys_values: tuple[torch.Tensor, torch.Tensor],
        encoder_mask: torch.Tensor | None,
        self_cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        """``x (B, Q, d)``, ``memory (B, Q, S*d)`` -> ``(B, Q, d)``.

        ``self_cache = (keys, values, position)``: preallocated ``(B, H, capacity, d/H)`` buffers;
        the new token's keys/values are written at ``position`` and attention runs over
        ``[0, position]`` (Q must be 1). Without a cache, attention is causal over ``x``.
        """
        h = self.self_attention_norm(x, memory)
        attended = self.self_attention.self_attend(h, self_cache)
        x = x + self.dropout(attended)
        h = self.cross_attention_norm(x, memory)
        x = x + self.dropout(self.cross_attention.attend(h, *cross_keys_values, encoder_mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x, memory)))


@dataclass
class CachedDecoderState:
    """Everything a cached step needs; rows = hypotheses. Tensors are ``(N, ...)``."""

    cross_keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (N, H, T, d/H) each
    encoder_mask: torch.Tensor | None  # (N, 1, 1, T) bool
    self_keys: list[torch.Tensor]  # per layer, (N, H, capacity, d/H)
    self_values: list[torch.Tensor]
    memory: torch.Tensor  # (N, S*d): relational-memory state after the last token read
    position: int  # index of the next token to read

    def reorder(self, index: torch.Tensor) -> "CachedDecoderState":
        def pick(tensor):
            return None if tensor is None else tensor.index_select(0, index)

        return CachedDecoderState(
            [(pick(k), pick(v)) for k, v in self.cross_keys_values],
            pick(self.encoder_mask),
            [pick(k) for k in self.self_keys],
            [pick(v) for v in self.self_values],
            pick(self.memory),
            self.position,
        )


@dataclass
class UncachedDecoderState:
    """Encoder output only: every step re-decodes the whole prefix (R2Gen's reference behaviour)."""

    encoder_states: torch.Tensor  # (N, T, d)
    encoder_mask: torch.Tensor | None  # (N, 1, 1, T)

    def reorder(self, index: torch.Tensor) -> "UncachedDecoderState":
        mask = None if self.encoder_mask is None else self.encoder_mask.index_select(0, index)
        return UncachedDecoderState(self.encoder_states.index_select(0, index), mask)


class ReportGenerator(ReportModel, nn.Module):
    """Memory-driven Transformer report generator (R2Gen) with an optional ViT encoder.

    Inputs: ``images (B, V, C, H, W)`` (V views, each through the ViT; ``(B, C, H, W)`` = one view)
    or ``features (B, T, D_enc)``; ``feature_mask (B, T)`` bool, True = real token (for studies
    with fewer views in a padded batch). ``tokens (B, L)`` start with ``<bos>``.
    """

    def __init__(self, config: ReportGeneratorConfig, tokenizer: ReportTokenizer | None = None):
        super().__init__()
        self.config = config
        if tokenizer is not None and len(tokenizer) != config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, config.vocab_size is {config.vocab_size}")
        self.tokenizer = tokenizer
        d = config.d_model
        self.encoder = VisionTransformer(config.encoder) if config.encoder is not None else None
        # (T * D) per-position statistics: the image-independent part of each token goes.
        self.visual_norm = nn.BatchNorm1d(config.num_visual_tokens * config.feature_dim) if config.visual_norm == "batch" else None
        self.visual_projection = nn.Sequential(
            nn.Linear(config.feature_dim, d), nn.ReLU(), nn.Dropout(config.visual_dropout)
        )
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.register_buffer("positions", sincos_positions(max(config.max_length, 512) + 1, d), persistent=False)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.memory = RelationalMemory(config.memory_slots, d, config.memory_heads, config.dropout)
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.decoder_norm = ConditionalLayerNorm(d, config.memory_slots * d)
        self.logits = nn.Linear(d, config.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # R2Gen: xavier-uniform for every matrix of the encoder-decoder (the ViT keeps its own init).
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and not name.startswith("encoder."):
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, ConditionalLayerNorm):
                module.reset_parameters()

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The ViT's input size (None without an encoder)."""
        return tuple(self.encoder.config.image_size) if self.encoder is not None else None

    # ----- encoder side -----
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, V, C, H, W)`` or ``(B, C, H, W)`` -> ViT tokens of all views ``(B, V * T, D_enc)``."""
        if self.encoder is None:
            raise ValueError("this model has no image encoder (config.encoder is None); pass features=")
        if images.ndim == 4:
            images = images.unsqueeze(1)
        if images.ndim != 5:
            raise ValueError(f"images must be (B, V, C, H, W) or (B, C, H, W), got {tuple(images.shape)}")
        views = images.shape[1]
        tokens = self.encoder.forward_features(rearrange(images, "b v c h w -> (b v) c h w"))
        return rearrange(tokens, "(b v) t d -> b (v t) d", v=views)

    def encode(
        self,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> encoder states ``(B, T, d)`` and the attention mask ``(B, 1, 1, T)`` (or None)."""
        if (images is None) == (features is None):
            raise ValueError("pass exactly one of images= or features=")
        if features is None:
            features = self.extract_features(images)
        if features.ndim != 3 or features.shape[-1] != self.config.feature_dim:
            raise ValueError(f"features must be (B, T, {self.config.feature_dim}), got {tuple(features.shape)}")
        mask = None
        if feature_mask is not None:
            if feature_mask.shape != features.shape[:2] or not bool(feature_mask.any(dim=1).all()):
                raise ValueError("feature_mask must be (B, T) bool with at least one True per row")
            mask = feature_mask.bool()[:, None, None, :]
        if self.visual_norm is not None:
            if features.shape[1] != self.config.num_visual_tokens:
                raise ValueError(f"visual_norm expects {self.config.num_visual_tokens} tokens per study, got {features.shape[1]}")
            features = self.visual_norm(features.flatten(1)).view_as(features)
        x = self.visual_projection(features)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    # ----- decoder side -----
    def embed_tokens(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``tokens (B, L)`` at positions ``start ... start + L - 1`` -> ``(B, L, d)``."""
        length = tokens.shape[1]
        if start + length > self.positions.shape[0]:
            raise ValueError(f"sequence of {start + length} tokens exceeds {self.positions.shape[0]} positions")
        scaled = self.token_embedding(tokens) * math.sqrt(self.config.d_model)
        return self.embedding_dropout(scaled + self.positions[start : start + length])

    def decode(
        self, tokens: torch.Tensor, encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Teacher-forced decoding of the whole sequence: ``tokens (B, L)`` -> logits ``(B, L, V)``."""
        embeddings = self.embed_tokens(tokens)
        initial = self.memory.initial_state(tokens.shape[0], tokens.device, embeddings.dtype)
        memory = self.memory(embeddings, initial)  # (B, L, S*d)
        x = embeddings
        for layer in self.decoder_layers:
            x = layer(x, memory, layer.cross_attention.keys_values(encoder_states), encoder_mask)
        return self.logits(self.decoder_norm(x, memory))

    def forward(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(B, L, V)`` for every position of ``tokens (B, L)`` (teacher forcing)."""
        encoder_states, encoder_mask = self.encode(images, features, feature_mask)
        return self.decode(tokens, encoder_states, encoder_mask)

    def loss(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``, padding ignored."""
        logits = self(tokens[:, :-1], images, features, feature_mask)
        return report_loss(logits, tokens[:, 1:], self.config.pad_id)

    # ----- generation -----
    def start_decoding(
        self, encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None, use_cache: bool, capacity: int
    ) -> CachedDecoderState | UncachedDecoderState:
        """The initial search state for ``encoder_states (B, T, d)``; ``capacity`` = max tokens to read."""
        if not use_cache:
            return UncachedDecoderState(encoder_states, encoder_mask)
        batch = encoder_states.shape[0]
        heads, head_dim = self.config.num_heads, self.config.d_model // self.config.num_heads
        buffer_shape = (batch, heads, capacity, head_dim)
        options = dict(device=encoder_states.device, dtype=encoder_states.dtype)
        return CachedDecoderState(
            cross_keys_values=[layer.cross_attention.keys_values(encoder_states) for layer in self.decoder_layers],
            encoder_mask=encoder_mask,
            self_keys=[torch.zeros(buffer_shape, **options) for _ in self.decoder_layers],
            self_values=[torch.zeros(buffer_shape, **options) for _ in self.decoder_layers],
            memory=self.memory.initial_state(batch, **options),
            position=0,
        )

    def decode_step(
        self, tokens: torch.Tensor, state: CachedDecoderState | UncachedDecoderState
    ) -> tuple[torch.Tensor, CachedDecoderState | UncachedDecoderState]:
        """Logits ``(N, V)`` for the token after prefix ``tokens (N, t)``, and the updated state."""
        if isinstance(state, UncachedDecoderState):
            return self.decode(tokens, state.encoder_states, state.encoder_mask)[:, -1], state
        position = state.position
        if tokens.shape[1] != position + 1:
            raise ValueError(f"cached state expects a prefix of {position + 1} tokens, got {tokens.shape[1]}")
        if position >= state.self_keys[0].shape[2]:
            raise ValueError(f"cache capacity {state.self_keys[0].shape[2]} exceeded")
        embedding = self.embed_tokens(tokens[:, -1:], start=position)  # (N, 1, d)
        memory = self.memory.step(embedding[:, 0], state.memory)  # (N, S*d): O(1) in the prefix
        x = embedding
        for layer, keys, values, cross in zip(
            self.decoder_layers, state.self_keys, state.self_values, state.cross_keys_values
        ):
            x = layer(x, memory[:, None], cross, state.encoder_mask, self_cache=(keys, values, position))
        logits = self.logits(self.decoder_norm(x, memory[:, None]))[:, 0]
        state.memory, state.position = memory, position + 1
        return logits, state

    # ----- persistence -----
    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (ViT included) + ``tokenizer.json`` (if any)."""
        directory = write_pretrained(directory, MODEL_TYPE, self.config, self)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ReportGenerator":
        """Load a ``save_pretrained`` folder (with its ``tokenizer.json`` when it has one).

        Raises:
            CheckpointError: naming the file (and field) of a missing, malformed or mismatched folder.
        """
        record = read_config_record(directory)
        model_type = record.pop("model_type")
        if model_type != MODEL_TYPE:
            raise CheckpointError(directory, f"model_type {model_type!r} is not a {MODEL_TYPE} checkpoint")
        config = config_from_record(ReportGeneratorConfig, record, directory)
        tokenizer = read_saved_tokenizer(directory, config)
        state = read_weights(directory)
        return build_and_load(directory, lambda: cls(config, tokenizer), state, record)

    @classmethod
    def from_encoder(
        cls,
        encoder_directory: str | Path,
        tokenizer: ReportTokenizer,
        image_size=None,
        preset: str = "r2gen",
        **overrides,
    ) -> "ReportGenerator":
        """A new generator around a pretrained ViT (an encoder or MAE folder), optionally resized."""
        vit_overrides = {} if image_size is None else {"image_size": image_size}
        encoder = VisionTransformer.from_pretrained(encoder_directory, **vit_overrides)
        config = report_generator_config(
            preset, len(tokenizer), **{"feature_dim": None, "encoder": encoder.config, **overrides}
        )
        config = dataclasses.replace(
            config, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id
        )
        model = cls(config, tokenizer)
        model.encoder.load_state_dict(encoder.state_dict())
        return model
