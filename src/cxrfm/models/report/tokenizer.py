"""Word-level report tokenisers: R2Gen's English rules and a Chinese character / jieba-word variant.

The normalisation rules live in :mod:`cxrfm.text` (shared with the NLG metrics).

Vocabulary (built from *training* reports only): ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3,
then every word seen at least ``min_frequency`` times (R2Gen: 3 for IU-Xray, 10 for MIMIC-CXR),
sorted. Any other word encodes to ``<unk>``. An encoded report is ``<bos> w1 ... wn <eos>`` cut to
``max_length`` (60) tokens; as in R2Gen, a cut report has no ``<eos>``, so the model is never
taught to stop mid-sentence.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cxrfm.config import from_dict, to_dict
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.pretrained import read_json_object
from cxrfm.text import clean_report_chinese, clean_report_english

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_TYPE = "report-word"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)



@dataclass
class TokenizerConfig:
    """How reports become words. ``max_length`` counts ``<bos>`` and ``<eos>``."""

    language: Literal["en", "zh"] = "en"
    chinese_unit: Literal["char", "word"] = "char"
    min_frequency: int = 3
    max_length: int = 60

    def __post_init__(self) -> None:
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {self.min_frequency}")
        if self.max_length < 2:
            raise ValueError(f"max_length must leave room for <bos> and one token, got {self.max_length}")


class ReportTokenizer:
    """Word-level tokeniser with a fixed vocabulary (see the module docstring for the rules).

    ``encode(report) -> list[int]``, ``decode(ids) -> str``, ``batch_encode(reports) -> (B, L)``
    padded ids; ``save_pretrained(dir)`` writes ``tokenizer.json``.
    """

    def __init__(self, vocabulary: Sequence[str], config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}, got {tuple(vocabulary[:4])}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has duplicate tokens")
        self.vocabulary: tuple[str, ...] = tuple(vocabulary)
        self.token_to_id = {token: index for index, token in enumerate(self.vocabulary)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(SPECIAL_TOKENS))

    # ----- building -----
    @classmethod
    def build(cls, reports: Iterable[str], config: TokenizerConfig | None = None) -> "ReportTokenizer":
        """Vocabulary = words seen ``>= config.min_frequency`` times in ``reports`` (training split only)."""
        config = config or TokenizerConfig()
        counts: Counter[str] = Counter()
        for report in reports:
            counts.update(clean_report(report, config).split())
        words = sorted(word for word, count in counts.items() if count >= config.min_frequency)
        words = [word for word in words if word not in SPECIAL_TOKENS]
        logger.info(
            "vocabulary: %d of %d distinct words kept (min_frequency %d)", len(words), len(counts), config.min_frequency
        )
        return cls([*SPECIAL_TOKENS, *words], config)

    # ----- text <-> ids -----
    def __len__(self) -> int:
        return len(self.vocabulary)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def clean(self, report: str) -> str:
        """The normalised, space-separated text (before vocabulary mapping)."""
        return clean_report(report, self.config)

    def words(self, report: str) -> list[str]:
        return self.clean(report).split()

    def encode(self, report: str, max_length: int | None = None) -> list[int]:
        """``<bos> w1 ... wn <eos>`` as ids, cut to ``max_length`` (default ``config.max_length``)."""
        max_length = self.config.max_length if max_length is None else max_length
        ids = [self.bos_id, *(self.token_to_id.get(w, self.unk_id) for w in self.words(report)), self.eos_id]
        return ids[:max_length]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Ids -> space-separated words, stopping at the first ``<eos>`` (``<bos>``/``<pad>`` skipped).

        ``<unk>`` is kept as the literal word ``<unk>``; ``skip_special=False`` keeps every token.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for index in ids:
            index = int(index)
            if skip_special and index == self.eos_id:
                break
            if skip_special and index in (self.pad_id, self.bos_id):
                continue
            if not 0 <= index < len(self.vocabulary):
                raise ValueError(f"token id {index} is outside the vocabulary (size {len(self.vocabulary)})")
            words.append(self.vocabulary[index])
        return " ".join(words)

    def batch_encode(self, reports: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """``(B, L)`` int64 ids, right-padded with ``<pad>`` to the longest report in the batch."""
        encoded = [self.encode(report, max_length) for report in reports]
        longest = max((len(ids) for ids in encoded), default=0)
        batch = torch.full((len(encoded), longest), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return batch

    def reference_text(self, report: str, max_length: int | None = None) -> str:
        """The reference as R2Gen scores it: normalised, cut to ``max_length``, rare words -> ``<unk>``."""
        return self.decode(self.encode(report, max_length))

    # ----- persistence -----
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` (config + vocabulary, ids = list positions)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = {"tokenizer_type": TOKENIZER_TYPE, "config": to_dict(self.config), "vocabulary": list(self.vocabulary)}
        path = directory / TOKENIZER_NAME
        path.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ReportTokenizer":
        """Load ``tokenizer.json`` from a folder (or the file itself).

        Raises:
            CheckpointError: naming the file (and field) when it is missing, not JSON, or malformed.
        """
        path = Path(directory)
        path = path / TOKENIZER_NAME if path.is_dir() else path
        if not path.is_file():
            raise CheckpointError(path, f"no {TOKENIZER_NAME}")

        def malformed(reason: str) -> CheckpointError:
            return CheckpointError(path, f"malformed tokenizer file: {reason}")

        try:
            record = read_json_object(path, "a JSON object with 'config' and 'vocabulary'")
        except CheckpointError as exc:
            raise malformed(exc.reason) from None

        kind = record.get("tokenizer_type", TOKENIZER_TYPE)
        if kind != TOKENIZER_TYPE:
            raise malformed(f"field 'tokenizer_type' is {kind!r}, not {TOKENIZER_TYPE!r}")
        for key in ("config", "vocabulary"):
            if key not in record:
                raise malformed(f"no '{key}' field")
        vocabulary = record["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(token, str) and token for token in vocabulary):
            raise malformed("field 'vocabulary' must be a list of non-empty strings")
        if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise malformed(f"field 'vocabulary' must start with {list(SPECIAL_TOKENS)}, got {vocabulary[: len(SPECIAL_TOKENS)]}")
        repeated = sorted(token for token, count in Counter(vocabulary).items() if count > 1)
        if repeated:
            raise malformed(f"field 'vocabulary' repeats tokens {repeated[:5]}")
        try:
            config = from_dict(TokenizerConfig, record["config"], source=path, prefix="config")
        except ConfigError as exc:
            raise malformed(f"field '{exc.field}': {exc.reason}") from None
        except (TypeError, ValueError) as exc:
            raise malformed(f"field 'config': {exc}") from None
        return cls(vocabulary, config)


def clean_report(report: str, config: TokenizerConfig) -> str:
    """Normalise ``report`` by the rules of ``config.language`` (module docstring)."""
    if config.language == "en":
        return clean_report_english(report)
    return clean_report_chinese(report, config.chinese_unit)
