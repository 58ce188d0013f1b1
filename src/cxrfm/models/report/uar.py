"""UAR -- Unify, Align and Refine (Li et al., ICCV 2023; shared/papers/002) -- on cxrfm's stack.

Every module sits behind a switch of :class:`UARConfig`, so each row of the paper's ablation
(Tab. 2) is a configuration:

* **Base**: visual features ``(B, T, D_enc)`` from a cxrfm ViT -> ``Linear -> ReLU -> Dropout``
  (optionally standardised first, ``visual_norm``) -> a 3-layer Transformer encoder-decoder.
* **LSU** (``visual: tokens``): each view goes through a frozen discrete VAE
  (:class:`~cxrfm.models.dvae.DiscreteVAE`, trained here) -> ``(H/8)(W/8)`` code ids per view,
  embedded by a learnt table ``W_I (codebook, d)`` plus learnt view/position embeddings. Image and
  report tokens then live in one ``d``-space and pass the same CRA and the same Transformer encoder
  (the report side through it for the global features below).
* **CRA** (``cra: true``, :class:`CrossModalAligner`): one module shared by both modalities, applied
  token-wise, so it keeps the decoder causal and cacheable.
* **L_Global** (``triplet_loss``): the two-sided triplet ranking loss with the hardest in-batch
  negatives, on mean-pooled encoder outputs of the image tokens and of the report tokens.
* **TIR** (``tir: true``): a learnable ``(T, L)`` mask added as ``k * sigmoid(M)`` to the decoder's
  text-to-image attention logits, with :meth:`UARGenerator.mask_loss` (Eq. 12, averaged).

A training step (weights {λ_CE, λ_Global, λ_Mask}; the paper's stage 1 is {1, 1, 0} with the mask
off, stage 2 {1, 1, 1} with it on)::

    out = model(tokens[:, :-1], images=images, report_tokens=tokens)
    loss = report_loss(out.logits, tokens[:, 1:], pad) \\
        + triplet_loss(out.image_features, out.report_features, margin=0.2) + model.mask_loss()

Deviations, on purpose: features for L_Global are pooled after the shared encoder rather than
straight after CRA, so the loss also shapes the Transformer (and exists with CRA off, as in the
paper's row (c)); negatives whose report is token-identical to the anchor's are not negatives
(templated phantom reports repeat often); the text embeddings are not scaled by ``sqrt(d)`` so
image and report tokens enter the shared encoder at the same scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cxrfm.errors import CheckpointError
from cxrfm.models.dvae import DiscreteVAE, DiscreteVAEConfig
from cxrfm.models.pretrained import build_and_load, config_from_record, read_config_record, read_weights, write_pretrained
from cxrfm.models.report.base import FeedForward, ReportModel, read_saved_tokenizer, report_loss, sincos_positions
from cxrfm.models.report.memory import MultiHeadAttention
from cxrfm.models.report.r2gen import EncoderLayer, UncachedDecoderState
from cxrfm.models.report.tokenizer import ReportTokenizer
from cxrfm.models.vit import ViTConfig, VisionTransformer, check_number, check_positive_int

MODEL_TYPE = "report-uar"


@dataclass
class UARConfig:
    """Architecture of a :class:`UARGenerator` (defaults = the paper's full model).

    ``visual``: ``tokens`` (LSU: dVAE code ids; ``dvae`` must be set) or ``features`` (Base: a
    ViT ``encoder`` or precomputed ``(B, T, feature_dim)`` features). ``num_visual_tokens``: visual
    tokens per study, ``L`` (views x tokens per view): the TIR mask is ``(max_length, L)``.
    ``basis_size``: rows of CRA's basis (paper 2,048). ``tir_scale``: ``k`` of Eq. 11 (paper 1,000).
    """

    vocab_size: int
    num_visual_tokens: int
    visual: Literal["tokens", "features"] = "tokens"
    dvae: DiscreteVAEConfig | None = None
    views_per_study: int = 1
    feature_dim: int | None = None
    encoder: ViTConfig | None = None
    visual_norm: Literal["none", "batch"] = "none"
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dropout: float = 0.1
    visual_dropout: float = 0.1
    cra: bool = True
    basis_size: int = 2048
    cra_heads: int = 8
    tir: bool = True
    tir_scale: float = 1000.0
    max_length: int = 60
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_visual_tokens", "views_per_study", "d_model", "num_heads", "d_ff",
                     "num_encoder_layers", "num_decoder_layers", "basis_size", "cra_heads", "max_length"):
            check_positive_int(self, name)
        for name in ("dropout", "visual_dropout"):
            check_number(self, name, low=0.0, high=1.0)
        check_number(self, "tir_scale", low=0.0)
        if self.visual not in ("tokens", "features"):
            raise ValueError(f"visual must be 'tokens' (LSU) or 'features', got {self.visual!r}")
        if self.visual == "tokens":
            if self.dvae is None:
                raise ValueError("visual 'tokens' (LSU) needs dvae (the image tokenizer's config)")
            per_view = (self.dvae.image_size // self.dvae.downsample) ** 2
            if self.num_visual_tokens != self.views_per_study * per_view:
                raise ValueError(
                    f"num_visual_tokens {self.num_visual_tokens} != {self.views_per_study} view(s) x {per_view} dVAE tokens"
                )
        else:
            if self.encoder is not None:
                if self.feature_dim not in (None, self.encoder.embed_dim):
                    raise ValueError(f"feature_dim {self.feature_dim} != encoder.embed_dim {self.encoder.embed_dim}")
                self.feature_dim = self.encoder.embed_dim
            if self.feature_dim is None:
                raise ValueError("visual 'features' needs feature_dim or encoder (a ViT config)")
        if self.visual_norm not in ("none", "batch"):
            raise ValueError(f"visual_norm must be 'none' or 'batch', got {self.visual_norm!r}")
        for heads in ("num_heads", "cra_heads"):
            if self.d_model % getattr(self, heads):
                raise ValueError(f"d_model {self.d_model} must be divisible by {heads} {getattr(self, heads)}")
        if self.vocab_size <= max(self.pad_id, self.bos_id, self.eos_id):
            raise ValueError(f"vocab_size {self.vocab_size} does not cover the special token ids")

    @property
    def image_size(self) -> tuple[int, int] | None:
        if self.visual == "tokens":
            return (self.dvae.image_size, self.dvae.image_size)
        return tuple(self.encoder.image_size) if self.encoder is not None else None


UAR_PRESETS: dict[str, dict] = {
    # The paper: Transformer-Base with 3 layers (512 wide, 8 heads, FFN 2048), basis 2048 x 512.
    "uar": dict(),
    # Tiny model for CPU tests and the main job.
    "uar-tiny-cpu": dict(d_model=64, num_heads=4, d_ff=128, num_encoder_layers=1, num_decoder_layers=2,
                         basis_size=256, cra_heads=4),
}


def uar_config(name: str, vocab_size: int, num_visual_tokens: int, **overrides) -> UARConfig:
    """Preset ``name`` with ``overrides`` applied."""
    if name not in UAR_PRESETS:
        raise ValueError(f"unknown UAR preset {name!r} (known: {', '.join(UAR_PRESETS)})")
    return UARConfig(vocab_size=vocab_size, num_visual_tokens=num_visual_tokens, **{**UAR_PRESETS[name], **overrides})


def orthonormal_basis(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``(rows, dim)`` with orthonormal COLUMNS (QR of a Gaussian matrix, i.e. Gram-Schmidt).

    The paper asks for "a set of orthonormal basis B in R^{2048 x d}". For ``d < 2048`` that is
    impossible as 2,048 orthonormal vectors: ``R^d`` holds at most ``d``. What QR gives is the
    closest thing: ``B^T B = I_d``, so the 2,048 rows form a tight frame of ``R^d`` (every direction
    equally represented). For ``rows < dim`` the rows are orthonormal instead.
    """
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(rows, dim), min(rows, dim), generator=generator)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))  # a unique Q (positive diagonal of R)
    return q if rows >= dim else q.T


class CrossModalAligner(nn.Module):
    """CRA (Sec. 3.3): tokens attend over a shared adjusted basis, then a dual gate (Eq. 6-9).

    ``B_hat = gamma * B + beta`` (``gamma``, ``beta`` of B's shape, Eq. 6);
    ``F~ = MultiHead(Q=E, K=V=B_hat)`` (Eq. 7); ``G(X, Y) = sigmoid(X W1 + Y W2)`` (Eq. 8);
    ``F = G_I(E, F~) * tanh(E + F~) + G_F(E, F~) * E + F~`` (Eq. 9). Token-wise: ``E (B, T, d)``
    -> ``F (B, T, d)``, each token independently of the others.
    """

    def __init__(self, d_model: int, basis_size: int, num_heads: int):
        super().__init__()
        self.register_buffer("basis", orthonormal_basis(basis_size, d_model))
        self.gamma = nn.Parameter(torch.ones(basis_size, d_model))
        self.beta = nn.Parameter(torch.zeros(basis_size, d_model))
        # No dropout on the attention over the basis: it would drop basis rows per token, and on CPU
        # its (tokens x heads x 2,048) mask cost as much as the attention itself.
        self.attention = MultiHeadAttention(d_model, num_heads, dropout=0.0)
        self.input_gate = nn.ModuleList([nn.Linear(d_model, d_model), nn.Linear(d_model, d_model, bias=False)])
        self.forget_gate = nn.ModuleList([nn.Linear(d_model, d_model), nn.Linear(d_model, d_model, bias=False)])

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        basis = (self.gamma * self.basis + self.beta).to(embeddings.dtype)  # (N, d)
        keys, values = self.attention.keys_values(basis[None])  # (1, H, N, d/H): once per call
        # Token-wise, so every token of the batch is one query row against the single basis: no
        # per-sample copies of the (N, d) keys/values.
        attended = self.attention.attend(embeddings.reshape(1, -1, embeddings.shape[-1]), keys, values)
        attended = attended.view_as(embeddings)
        gate_in = torch.sigmoid(self.input_gate[0](embeddings) + self.input_gate[1](attended))
        gate_forget = torch.sigmoid(self.forget_gate[0](embeddings) + self.forget_gate[1](attended))
        return gate_in * torch.tanh(embeddings + attended) + gate_forget * embeddings + attended


def triplet_loss(
    image_features: torch.Tensor, report_features: torch.Tensor, margin: float = 0.2, same_report: torch.Tensor | None = None
) -> torch.Tensor:
    """L_Global (Eq. 10): two-sided triplet ranking loss with the hardest in-batch negatives.

    ``image_features``, ``report_features``: ``(B, d)`` pooled features of matched pairs (row i
    with row i). ``same_report (B, B)`` bool: pairs whose reports are identical are not negatives.
    Mean over the batch of ``relu(a - s_ii + max_j s_ij) + relu(a - s_ii + max_j s_ji)`` with ``s``
    the cosine similarity.
    """
    if image_features.shape[0] < 2:
        return image_features.sum() * 0.0
    similarity = F.normalize(image_features.float(), dim=-1) @ F.normalize(report_features.float(), dim=-1).T
    positive = similarity.diagonal()
    excluded = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    if same_report is not None:
        excluded = excluded | same_report
    negatives = similarity.masked_fill(excluded, float("-inf"))
    hardest_report = negatives.max(dim=1).values  # for each image
    hardest_image = negatives.max(dim=0).values  # for each report
    # A study whose every other report is identical has no negative: it adds nothing.
    loss = F.relu(margin - positive + hardest_report) + F.relu(margin - positive + hardest_image)
    return torch.where(torch.isfinite(loss), loss, 0.0).mean()


class UAROutput(NamedTuple):
    """``logits (B, L, V)``; ``image_features``/``report_features (B, d)`` (None unless asked for)."""

    logits: torch.Tensor
    image_features: torch.Tensor | None = None
    report_features: torch.Tensor | None = None


class UARDecoderLayer(nn.Module):
    """Pre-norm self-attention, text-to-image attention (where TIR's mask acts) and FFN."""

    def __init__(self, config: UARConfig):
        super().__init__()
        d = config.d_model
        self.self_attention_norm = nn.LayerNorm(d, eps=1e-6)
        self.self_attention = MultiHeadAttention(d, config.num_heads, config.dropout)
        self.cross_attention_norm = nn.LayerNorm(d, eps=1e-6)
        self.cross_attention = MultiHeadAttention(d, config.num_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-6)
        self.ffn = FeedForward(d, config.d_ff, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cross_keys_values, cross_bias, self_cache=None) -> torch.Tensor:
        """``x (B, Q, d)``; ``cross_bias`` float, broadcastable to ``(B, H, Q, L)``, added to the
        scaled text-to-image logits; ``self_cache = (keys, values, position)`` as in R2Gen's layer."""
        h = self.self_attention_norm(x)
        attended = self.self_attention.self_attend(h, self_cache)
        x = x + self.dropout(attended)
        h = self.cross_attention_norm(x)
        x = x + self.dropout(self.cross_attention.attend(h, *cross_keys_values, cross_bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


@dataclass
class UARCachedState:
    """Rows = hypotheses. Per layer: text-to-image keys/values ``(N, H, L, d/H)`` and self-attention
    buffers ``(N, H, capacity, d/H)``; ``visual_mask (N, 1, 1, L)`` bool or None."""

    cross_keys_values: list[tuple[torch.Tensor, torch.Tensor]]
    visual_mask: torch.Tensor | None
    self_keys: list[torch.Tensor]
    self_values: list[torch.Tensor]
    position: int

    def reorder(self, index: torch.Tensor) -> "UARCachedState":
        def pick(tensor):
            return None if tensor is None else tensor.index_select(0, index)

        return UARCachedState(
            [(pick(k), pick(v)) for k, v in self.cross_keys_values], pick(self.visual_mask),
            [pick(k) for k in self.self_keys], [pick(v) for v in self.self_values], self.position,
        )


class UARGenerator(ReportModel, nn.Module):
    """UAR report generator. Inputs as :class:`~cxrfm.models.report.ReportGenerator`: ``images
    (B, V, 1, H, W)`` (or ``(B, 1, H, W)``) or ``features (B, T, D_enc)``; ``tokens (B, L)`` start
    with ``<bos>``. ``refine``: whether TIR's mask is applied (stage 1 of the two-stage schedule
    turns it off; a saved model is loaded with it on whenever ``config.tir``).
    """

    def __init__(self, config: UARConfig, tokenizer: ReportTokenizer | None = None):
        super().__init__()
        self.config = config
        if tokenizer is not None and len(tokenizer) != config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, config.vocab_size is {config.vocab_size}")
        self.tokenizer = tokenizer
        d = config.d_model
        self.image_tokenizer = DiscreteVAE(config.dvae).requires_grad_(False) if config.visual == "tokens" else None
        self.encoder = VisionTransformer(config.encoder) if config.encoder is not None and config.visual == "features" else None
        if config.visual == "tokens":
            self.visual_embedding = nn.Embedding(config.dvae.codebook_size, d)
            self.visual_positions = nn.Parameter(torch.zeros(config.num_visual_tokens, d))
            nn.init.trunc_normal_(self.visual_positions, std=0.02)
        else:
            size = config.num_visual_tokens * config.feature_dim
            self.visual_norm = nn.BatchNorm1d(size) if config.visual_norm == "batch" else None
            self.visual_projection = nn.Sequential(nn.Linear(config.feature_dim, d), nn.ReLU(), nn.Dropout(config.visual_dropout))
        self.aligner = CrossModalAligner(d, config.basis_size, config.cra_heads) if config.cra else None
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.register_buffer("positions", sincos_positions(config.max_length + 1, d), persistent=False)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.decoder_layers = nn.ModuleList(UARDecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.logits = nn.Linear(d, config.vocab_size)
        # TIR: sigmoid(0) = 0.5 everywhere, a row constant, so the mask starts with no effect.
        self.refiner_mask = nn.Parameter(torch.zeros(config.max_length, config.num_visual_tokens)) if config.tir else None
        self.refine = config.tir
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and name.split(".")[0] in ("visual_projection", "encoder_layers", "decoder_layers", "logits"):
                nn.init.xavier_uniform_(parameter)

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.config.image_size

    # ----- encoder side -----
    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, V, 1, H, W)`` or ``(B, 1, H, W)`` -> the study's visual tokens: dVAE ids
        ``(B, V * L_view)`` int64 (LSU) or ViT features ``(B, V * T, D_enc)``."""
        if images.ndim == 4:
            images = images.unsqueeze(1)
        if images.ndim != 5:
            raise ValueError(f"images must be (B, V, C, H, W) or (B, C, H, W), got {tuple(images.shape)}")
        views = images.shape[1]
        flat = rearrange(images, "b v c h w -> (b v) c h w")
        if self.image_tokenizer is not None:
            ids = self.image_tokenizer.encode_tokens(flat.float())
        elif self.encoder is not None:
            ids = self.encoder.forward_features(flat)
        else:
            raise ValueError("this model has no image encoder (visual 'features' without encoder); pass features=")
        return rearrange(ids, "(b v) t ... -> b (v t) ...", v=views)

    def embed_visual(self, images=None, features=None) -> torch.Tensor:
        """E^(I): ``(B, L, d)`` visual embeddings (before CRA)."""
        if (images is None) == (features is None):
            raise ValueError("pass exactly one of images= or features=")
        visual = self.visual_tokens(images) if images is not None else features
        if self.config.visual == "tokens":
            if visual.dtype != torch.long or visual.shape[1] != self.config.num_visual_tokens:
                raise ValueError(f"LSU expects (B, {self.config.num_visual_tokens}) code ids, got {tuple(visual.shape)} {visual.dtype}")
            return self.visual_embedding(visual) + self.visual_positions
        if visual.ndim != 3 or visual.shape[-1] != self.config.feature_dim:
            raise ValueError(f"features must be (B, T, {self.config.feature_dim}), got {tuple(visual.shape)}")
        if self.visual_norm is not None:
            if visual.shape[1] != self.config.num_visual_tokens:
                raise ValueError(f"visual_norm expects {self.config.num_visual_tokens} tokens per study, got {visual.shape[1]}")
            visual = self.visual_norm(visual.flatten(1)).view_as(visual)
        return self.visual_projection(visual)

    def align(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings if self.aligner is None else self.aligner(embeddings)

    def run_encoder(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def encode(self, images=None, features=None, feature_mask=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> encoder states ``(B, L, d)`` and the visual mask ``(B, 1, 1, L)`` bool (or None)."""
        x = self.align(self.embed_visual(images, features))
        mask = None
        if feature_mask is not None:
            if feature_mask.shape != x.shape[:2] or not bool(feature_mask.any(dim=1).all()):
                raise ValueError("feature_mask must be (B, L) bool with at least one True per row")
            mask = feature_mask.bool()[:, None, None, :]
        return self.run_encoder(x, mask), mask

    # ----- report side -----
    def embed_report(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """F^(R) + positions: ``tokens (B, Q)`` at ``start ... start + Q - 1`` -> ``(B, Q, d)``."""
        length = tokens.shape[1]
        if start + length > self.config.max_length:
            raise ValueError(f"sequence of {start + length} tokens exceeds max_length {self.config.max_length}")
        aligned = self.align(self.token_embedding(tokens))
        return self.embedding_dropout(aligned + self.positions[start : start + length])

    def report_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled report feature ``(B, d)``: the whole report through the shared encoder, padding masked."""
        tokens = tokens[:, : self.config.max_length]
        real = tokens != self.config.pad_id  # (B, Q)
        states = self.run_encoder(self.embed_report(tokens), real[:, None, None, :])
        return (states * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)

    def cross_bias(self, start: int, length: int, visual_mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
        """TIR's ``k * sigmoid(M) / sqrt(d_head)`` for text positions ``start ...`` (Eq. 11 divides the
        sum of logits and mask by the scale; attention already scales the logits), with ``-inf`` at
        masked visual tokens. ``(1 or B, 1, Q, L)`` float, or the bool mask when TIR is off."""
        if self.refiner_mask is None or not self.refine:
            return visual_mask
        head_dim = self.config.d_model // self.config.num_heads
        bias = self.config.tir_scale * torch.sigmoid(self.refiner_mask[start : start + length]) / math.sqrt(head_dim)
        bias = bias[None, None].to(dtype)
        if visual_mask is not None:
            bias = torch.where(visual_mask, bias, float("-inf"))  # (B, 1, Q, L)
        return bias

    def decode(self, tokens: torch.Tensor, encoder_states: torch.Tensor, visual_mask: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced decoding: ``tokens (B, Q)`` -> logits ``(B, Q, V)``."""
        x = self.embed_report(tokens)
        bias = self.cross_bias(0, tokens.shape[1], visual_mask, x.dtype)
        for layer in self.decoder_layers:
            x = layer(x, layer.cross_attention.keys_values(encoder_states), bias)
        return self.logits(self.decoder_norm(x))

    def forward(self, tokens, images=None, features=None, feature_mask=None, *, report_tokens=None):
        """``UAROutput``: next-token logits for ``tokens (B, Q)``; with ``report_tokens (B, L)`` (the
        whole reports) also the pooled image and report features of L_Global."""
        states, mask = self.encode(images, features, feature_mask)
        logits = self.decode(tokens, states, mask)
        if report_tokens is None:
            return UAROutput(logits)
        if mask is None:
            image_features = states.mean(1)
        else:
            real = mask[:, 0, 0, :, None].to(states.dtype)
            image_features = (states * real).sum(1) / real.sum(1)
        return UAROutput(logits, image_features, self.report_features(report_tokens))

    def loss(self, tokens, images=None, features=None, feature_mask=None) -> torch.Tensor:
        """Mean cross-entropy of predicting ``tokens[:, 1:]`` (L_CE only)."""
        return report_loss(self(tokens[:, :-1], images, features, feature_mask).logits, tokens[:, 1:], self.config.pad_id)

    def mask_loss(self) -> torch.Tensor:
        """L_Mask (Eq. 12) averaged over the ``(T, L)`` mask: ``mean_ij (1 - sigmoid(M_ij))``.

        Minimised alone it pushes every entry to 1 -- a constant in each row, which the softmax
        ignores: on its own it changes no attention. What shapes attention is the cross-entropy's
        gradient through ``k * sigmoid(M)``; L_Mask only pulls the mask towards "open" (the paper's
        "focus on proper visual information" rests on that interplay).

        A deviation: Eq. 12 SUMS the ``T * L`` entries. Its gradient norm is then
        ``0.25 * sqrt(T * L)`` at the start (about 27 for 60 x 196), and under clipping by global
        norm (ours, 1.0) that scales every other gradient down by the same factor for the whole of
        stage 2. The mean keeps the direction and leaves clipping to the rest of the model.
        0 without TIR.
        """
        if self.refiner_mask is None:
            return self.logits.weight.sum() * 0.0
        return (1 - torch.sigmoid(self.refiner_mask)).mean()

    # ----- generation -----
    def start_decoding(self, encoder_states, encoder_mask, use_cache: bool, capacity: int):
        if not use_cache:
            return UncachedDecoderState(encoder_states, encoder_mask)
        batch = encoder_states.shape[0]
        heads, head_dim = self.config.num_heads, self.config.d_model // self.config.num_heads
        options = dict(device=encoder_states.device, dtype=encoder_states.dtype)
        buffers = lambda: [torch.zeros((batch, heads, capacity, head_dim), **options) for _ in self.decoder_layers]  # noqa: E731
        return UARCachedState(
            [layer.cross_attention.keys_values(encoder_states) for layer in self.decoder_layers],
            encoder_mask, buffers(), buffers(), 0,
        )

    def decode_step(self, tokens: torch.Tensor, state):
        """Logits ``(N, V)`` for the token after prefix ``tokens (N, t)``, and the updated state."""
        if isinstance(state, UncachedDecoderState):
            return self.decode(tokens, state.encoder_states, state.encoder_mask)[:, -1], state
        position = state.position
        if tokens.shape[1] != position + 1:
            raise ValueError(f"cached state expects a prefix of {position + 1} tokens, got {tokens.shape[1]}")
        if position >= state.self_keys[0].shape[2]:
            raise ValueError(f"cache capacity {state.self_keys[0].shape[2]} exceeded")
        x = self.embed_report(tokens[:, -1:], start=position)
        bias = self.cross_bias(position, 1, state.visual_mask, x.dtype)
        for layer, keys, values, cross in zip(self.decoder_layers, state.self_keys, state.self_values, state.cross_keys_values):
            x = layer(x, cross, bias, self_cache=(keys, values, position))
        state.position = position + 1
        return self.logits(self.decoder_norm(x))[:, 0], state

    # ----- persistence -----
    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (dVAE or ViT included) + ``tokenizer.json``."""
        directory = write_pretrained(directory, MODEL_TYPE, self.config, self)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "UARGenerator":
        """Load a ``save_pretrained`` folder; a bad one is a CheckpointError naming the file."""
        record = read_config_record(directory)
        model_type = record.pop("model_type")
        if model_type != MODEL_TYPE:
            raise CheckpointError(directory, f"model_type {model_type!r} is not a {MODEL_TYPE} checkpoint")
        config = config_from_record(UARConfig, record, directory)
        tokenizer = read_saved_tokenizer(directory, config)
        return build_and_load(directory, lambda: cls(config, tokenizer), read_weights(directory), record)

    @classmethod
    def with_image_tokenizer(cls, dvae: DiscreteVAE, tokenizer: ReportTokenizer, views: int, preset: str = "uar", **overrides):
        """A new LSU model around a trained ``dvae`` (its weights copied in, frozen)."""
        per_view = (dvae.config.image_size // dvae.config.downsample) ** 2
        config = uar_config(
            preset, len(tokenizer), views * per_view, visual="tokens", dvae=dvae.config, views_per_study=views,
            pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, **overrides,
        )
        model = cls(config, tokenizer)
        model.image_tokenizer.load_state_dict(dvae.state_dict())
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_tokenizer is not None:
            self.image_tokenizer.eval()  # frozen: no dropout / batch statistics of its own
        return self

