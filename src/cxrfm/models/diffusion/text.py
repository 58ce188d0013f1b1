"""Diff-CXR's text side (AVA-TLS, shared/papers/003 Sec. III-C): report states, the information
squeeze, and the image tower it is trained against (our CXR-CLIP).

* **Report states** ``(B, 1 + 256, 384)``: the sentence encoder's pooled feature (masked mean, as
  sentence-transformers pools MiniLM) followed by its 256 token states. The encoder is the packaged
  all-MiniLM-L6-v2 (384-d, 256-token context; the paper: BiomedCLIP's 768-d text tower, which
  cannot be downloaded here). Deviations: (1) the encoder stays frozen (the paper fine-tunes it);
  on CPU that lets every report's states be computed once and cached; (2) states at padding
  positions are zeros, not the padded tokens' outputs -- those carry no report content, and zeros
  make a report's states independent of how long the longest report in its batch was.
* **Information squeeze** (Fig. 4b): tokens are the channels of two Conv1d blocks,
  ``Conv1d(257 -> 257, k3) -> LayerNorm -> ReLU -> Conv1d(257 -> 78, k3) -> LayerNorm -> ReLU``,
  giving ``(B, 78, 384)``: token 0 is trained with symmetric InfoNCE against the image tower (logit
  scale fixed at 1 / 0.07), tokens 1-77 condition the denoiser. Without the squeeze (the ablation's
  "none" row) the 256 token states condition the denoiser and the pooled feature is token 0.
* **Image tower**: a cxrfm ViT (e.g. the MAE encoder), mean-pooled tokens, a linear map to 384.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.errors import CheckpointError
from cxrfm.models.classify.label_embedding import DEFAULT_TEXT_MODEL, load_sentence_encoder
from cxrfm.models.pretrained import load_pretrained, write_pretrained
from cxrfm.models.vit import VisionTransformer, ViTConfig, check_positive_int

MODEL_TYPE = "report-encoder"
LOGIT_SCALE = 1 / 0.07  # the notes: InfoNCE with a fixed logit scale of 1 / 0.07


@dataclass
class ReportEncoderConfig:
    """``max_tokens``: the text encoder's context (MiniLM 256); ``width``: its width (384);
    ``squeeze``: apply the information squeeze; ``condition_tokens``: squeezed tokens that condition
    the denoiser (77; one more, token 0, is the retrieval embedding)."""

    text_model: str = DEFAULT_TEXT_MODEL
    max_tokens: int = 256
    width: int = 384
    squeeze: bool = True
    condition_tokens: int = 77
    kernel_size: int = 3

    def __post_init__(self) -> None:
        for name in ("max_tokens", "width", "condition_tokens", "kernel_size"):
            check_positive_int(self, name)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length convolution), got {self.kernel_size}")

    @property
    def context_length(self) -> int:
        """Tokens the denoiser is conditioned on."""
        return self.condition_tokens if self.squeeze else self.max_tokens


_STATE_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (text model, context, report) -> (L, width)
STATE_CACHE_SIZE = 8192


def _remember(key: tuple, tokens: torch.Tensor) -> None:
    _STATE_CACHE[key] = tokens
    while len(_STATE_CACHE) > STATE_CACHE_SIZE:
        _STATE_CACHE.popitem(last=False)


class InformationSqueeze(nn.Module):
    """``(B, 1 + max_tokens, width)`` -> ``(B, 1 + condition_tokens, width)``: tokens as Conv1d channels."""

    def __init__(self, tokens_in: int, tokens_out: int, width: int, kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.blocks = nn.Sequential(
            nn.Conv1d(tokens_in, tokens_in, kernel_size, padding=padding), nn.LayerNorm(width), nn.ReLU(),
            nn.Conv1d(tokens_in, tokens_out, kernel_size, padding=padding), nn.LayerNorm(width), nn.ReLU(),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.blocks(states)


class ReportEncoder(nn.Module):
    """Reports -> ``(retrieval (B, width), condition (B, context_length, width))``.

    The frozen sentence encoder is not a submodule (it is loaded from its package, never saved or
    trained); :meth:`report_states` runs it, :meth:`forward` runs the squeeze on its states.
    """

    def __init__(self, config: ReportEncoderConfig):
        super().__init__()
        self.config = config
        self.squeeze = (
            InformationSqueeze(1 + config.max_tokens, 1 + config.condition_tokens, config.width, config.kernel_size)
            if config.squeeze else None
        )

    @torch.no_grad()
    def report_states(self, reports: list[str], batch_size: int = 32) -> torch.Tensor:
        """``(N, 1 + max_tokens, width)`` float32 on CPU: [pooled feature, token states, zeros at padding].

        Each distinct report runs through the sentence encoder once per process (an LRU cache of
        the unpadded states): the stages of a run and templated reports repeat texts."""
        tokenizer, encoder = load_sentence_encoder(self.config.text_model)
        if encoder.config.hidden_size != self.config.width:
            raise CheckpointError(self.config.text_model, f"text encoder width {encoder.config.hidden_size} != width {self.config.width}")
        texts = [str(report) for report in reports]
        key = (self.config.text_model, self.config.max_tokens)
        missing = list(dict.fromkeys(text for text in texts if (key, text) not in _STATE_CACHE))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt")
            states = encoder(**batch).last_hidden_state.float()  # (b, L, width), L <= max_tokens
            for text, row, mask in zip(chunk, states, batch["attention_mask"].bool()):
                _remember((key, text), row[mask].clone())
        out = torch.zeros(len(texts), 1 + self.config.max_tokens, self.config.width)
        for index, text in enumerate(texts):
            tokens = _STATE_CACHE[(key, text)]
            _STATE_CACHE.move_to_end((key, text))
            out[index, 0] = tokens.mean(0)
            out[index, 1 : 1 + len(tokens)] = tokens
        return out

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``states (B, 1 + max_tokens, width)`` -> ``retrieval (B, width)``, ``condition (B, context_length, width)``."""
        expected = (1 + self.config.max_tokens, self.config.width)
        if states.ndim != 3 or tuple(states.shape[1:]) != expected:
            raise ValueError(f"report states must be (B, {expected[0]}, {expected[1]}), got {tuple(states.shape)}")
        tokens = states if self.squeeze is None else self.squeeze(states)
        return tokens[:, 0], tokens[:, 1:]

    def encode(self, reports: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Report strings -> :meth:`forward`'s outputs (on this module's device)."""
        device = next(self.parameters(), torch.empty(0)).device
        return self(self.report_states(reports).to(device))

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_pretrained(directory, MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ReportEncoder":
        return load_pretrained(directory, MODEL_TYPE, ReportEncoderConfig, cls)


class ImageTower(nn.Module):
    """A cxrfm ViT, mean-pooled tokens, a linear map: ``(B, 1, H, W)`` -> ``(B, out_dim)``."""

    def __init__(self, encoder: VisionTransformer, out_dim: int):
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(encoder.config.embed_dim, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens :]
        return self.projection(tokens.mean(1))


def info_nce(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows ``(B, E)``, ``(B, E)``: mean of the image->text and text->image
    cross-entropies over cosine logits times ``logit_scale``."""
    logits = logit_scale * F.normalize(image_embeddings.float(), dim=-1) @ F.normalize(text_embeddings.float(), dim=-1).T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


CONTRAST_MODEL_TYPE = "report-image-contrast"


@dataclass
class ReportImageContrastConfig:
    """The two towers: the report encoder's config and the image tower's ViT (its projection maps
    ``image_encoder.embed_dim`` to ``report_encoder.width``)."""

    report_encoder: ReportEncoderConfig
    image_encoder: ViTConfig


class ReportImageContrast(nn.Module):
    """The CXR-CLIP of stage 3: a :class:`ReportEncoder` (squeeze trained) and an :class:`ImageTower`.

    ``forward(images (B, 1, H, W), states (B, 1 + max_tokens, width)) -> (image (B, E), text (B, E))``.
    Saved as one folder; :meth:`from_pretrained` ``.report_encoder`` is what the denoiser needs.
    """

    def __init__(self, report_encoder: ReportEncoder, image_tower: ImageTower):
        super().__init__()
        self.report_encoder = report_encoder
        self.image_tower = image_tower
        self.config = ReportImageContrastConfig(report_encoder.config, image_tower.encoder.config)

    def forward(self, images: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        retrieval, _ = self.report_encoder(states)
        return self.image_tower(images), retrieval

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_pretrained(directory, CONTRAST_MODEL_TYPE, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ReportImageContrast":
        def build(config: ReportImageContrastConfig) -> "ReportImageContrast":
            tower = ImageTower(VisionTransformer(config.image_encoder), config.report_encoder.width)
            return cls(ReportEncoder(config.report_encoder), tower)

        return load_pretrained(directory, CONTRAST_MODEL_TYPE, ReportImageContrastConfig, build)
