"""What every report generator here shares: generation through the batched search, the two-rate
optimiser groups, the cross-entropy, sin-cos positions and the tokenizer check of a saved folder.

A generator mixing in :class:`ReportModel` provides

* ``encode(images=, features=, feature_mask=) -> (states (B, T, d), mask (B, 1, 1, T) bool | None)``;
* ``start_decoding(states, mask, use_cache, capacity) -> state`` (a state with ``reorder(index)``);
* ``decode_step(tokens (N, t), state) -> (logits (N, V), state)``;
* ``config`` with ``max_length``, ``bos_id``, ``eos_id``, ``pad_id`` and, for the ViT it may own,
  the attribute ``encoder`` (its parameters get the encoder learning rate).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.errors import CheckpointError
from cxrfm.models.pretrained import CONFIG_NAME
from cxrfm.models.report.decoding import GenerationOutput, SpecialTokens, beam_search, greedy_search
from cxrfm.models.report.tokenizer import TOKENIZER_NAME, ReportTokenizer


def sincos_positions(length: int, d_model: int) -> torch.Tensor:
    """``(length, d_model)`` Transformer position encodings (sin on even, cos on odd channels)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


def report_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Token-mean cross-entropy of ``logits (B, L, V)`` against ``targets (B, L)``, ``pad_id`` ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id)


class ReportModel:
    """Mixin: generation, text decoding and optimiser groups on top of encode / decode_step."""

    @property
    def special_tokens(self) -> SpecialTokens:
        return SpecialTokens(self.config.bos_id, self.config.eos_id, self.config.pad_id)

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
        *,
        beam_size: int = 3,
        max_length: int | None = None,
        length_penalty: float = 0.0,
        no_repeat_ngram_size: int = 0,
        use_cache: bool = True,
    ) -> GenerationOutput:
        """Greedy (``beam_size=1``) or beam search; ``max_length`` tokens at most after ``<bos>``.

        Runs in eval mode (dropout off) and restores the previous mode afterwards.
        """
        max_length = self.config.max_length if max_length is None else max_length
        was_training = self.training
        self.eval()
        try:
            encoder_states, encoder_mask = self.encode(images, features, feature_mask)
            batch = encoder_states.shape[0]
            state = self.start_decoding(encoder_states, encoder_mask, use_cache, capacity=max_length)
            common = dict(
                max_length=max_length, special=self.special_tokens,
                no_repeat_ngram_size=no_repeat_ngram_size, device=encoder_states.device,
            )
            if beam_size == 1:
                return greedy_search(self.decode_step, state, batch, **common)
            return beam_search(
                self.decode_step, state, batch, beam_size=beam_size, length_penalty=length_penalty, **common
            )
        finally:
            self.train(was_training)

    def generate_text(self, images=None, features=None, feature_mask=None, **search) -> list[str]:
        """:meth:`generate`, decoded with the model's tokenizer (space-separated words)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; decode GenerationOutput.sequences yourself")
        output = self.generate(images, features, feature_mask, **search)
        return [self.tokenizer.decode(row) for row in output.sequences]

    def param_groups(self, lr_encoder: float, lr_decoder: float, weight_decay: float) -> list[dict]:
        """Optimiser groups: the ViT ``encoder`` at ``lr_encoder``, everything else at ``lr_decoder``.

        Weight decay applies to matrices only; biases, norm gains/shifts, the ViT class token and
        position embeddings are exempt. (R2Gen decays every parameter with Adam's L2 term.) Frozen
        parameters (a fixed image tokenizer, a frozen ViT) are left out.
        """
        encoder = getattr(self, "encoder", None)
        exempt = {f"encoder.{name}" for name in encoder.no_weight_decay()} if encoder is not None else set()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            is_encoder = name.startswith("encoder.")
            decays = parameter.ndim > 1 and name not in exempt
            groups.setdefault((is_encoder, decays), []).append(parameter)
        return [
            {
                "params": params,
                "lr": lr_encoder if is_encoder else lr_decoder,
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{'encoder' if is_encoder else 'decoder'}{'' if decays else '_no_decay'}",
            }
            for (is_encoder, decays), params in sorted(groups.items(), reverse=True)
        ]


def check_tokenizer_fits(config, tokenizer: ReportTokenizer, directory: Path) -> None:
    """The saved tokenizer must be the one the model was trained with: same size, same special ids."""
    if len(tokenizer) != config.vocab_size:
        raise CheckpointError(
            directory,
            f"{TOKENIZER_NAME} has {len(tokenizer)} tokens but {CONFIG_NAME} field 'vocab_size' is {config.vocab_size}",
        )
    for name in ("pad_id", "bos_id", "eos_id"):
        if getattr(tokenizer, name) != getattr(config, name):
            raise CheckpointError(
                directory,
                f"{CONFIG_NAME} field '{name}' is {getattr(config, name)}, but {TOKENIZER_NAME} puts it at {getattr(tokenizer, name)}",
            )


def read_saved_tokenizer(directory: str | Path, config) -> ReportTokenizer | None:
    """The folder's ``tokenizer.json`` (checked against ``config``), or None when it has none."""
    path = Path(directory) / TOKENIZER_NAME
    if not path.exists():
        return None
    tokenizer = ReportTokenizer.from_pretrained(path)
    check_tokenizer_fits(config, tokenizer, Path(directory))
    return tokenizer
