"""Report text normalisation shared by the report tokenizer and the NLG metrics (one set of rules).

English (R2Gen ``Tokenizer.clean_report_iu_xray``, reproduced rule by rule):

1. ``..`` -> ``.`` (three times, so runs of up to 8 dots collapse); the list numbering ``1. `` is
   deleted and ``. 2. ``, ``. 3. ``, ``. 4. ``, ``. 5. `` and `` 2. `` ... `` 5. `` become ``. ``.
2. Strip, lowercase, split into sentences on ``". "``.
3. In each sentence delete ``" / \\ '``, then every character of R2Gen's class
   ``[.,?;*!%^&_+():-\\[\\]{}]`` -- note ``:-\\[`` in that class is a *range* from ``:`` to ``[``, so
   ``;<=>?@`` and upper-case letters go too, while ``-``, ``#``, ``$`` and digits stay.
4. Join the sentences with ``" . "`` and end with ``" ."``; words are the whitespace-split tokens,
   so ``"."`` is a word (the sentence separator).

One deliberate difference: R2Gen's filter ``if sent_cleaner(sent) != []`` compares a string with a
list and never drops anything, so an empty sentence (``"Normal.. "``) leaves a doubled ``". ."``;
here empty sentences are dropped.

Chinese: NFKC (full-width Latin letters, digits and punctuation become ASCII), lowercase, split into
sentences on ``。！？；!?;`` and line breaks, replace punctuation and symbols (Unicode categories P*
and S*) inside each sentence by spaces, then cut each sentence into characters (``unit="char"``:
every CJK character is a token, a run of Latin letters/digits is one token) or jieba words
(``"word"``; jieba's bundled dictionary, HMM on), and join sentences with ``" 。 "``. Text is always
returned space-separated, which is what the n-gram metrics expect.

:func:`normalize_report` is what the NLG metrics apply to predictions and references: English is
:func:`clean_report_english`, Chinese is :func:`clean_report_chinese` with ``unit="char"``. Both
are idempotent, so text that already went through the tokenizer (char mode) is left exactly as it
is and its scores do not change, while raw text scores as if it had been cleaned first (no ``"1"``
tokens from list numbering, no unsegmented Chinese clauses). Text cut into jieba words is re-cut
into characters, i.e. Chinese is always scored per character.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Literal

from cxrfm.errors import ConfigError

# R2Gen's sentence cleaner, verbatim (see the module docstring for what the ":-\[" range removes).
_R2GEN_PUNCTUATION = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_CHINESE_SENTENCE_END = re.compile(r"[。！？；!?;\n\r]+")
_LATIN_RUN_OR_CHAR = re.compile(r"[a-z0-9]+|\S")


def clean_report_english(report: str) -> str:
    """R2Gen's IU-Xray normalisation.

    ``"Heart size normal. No effusion."`` -> ``"heart size normal . no effusion ."``.
    """
    text = report.replace("..", ".").replace("..", ".").replace("..", ".").replace("1. ", "")
    for number in "2345":
        text = text.replace(f". {number}. ", ". ")
    for number in "2345":
        text = text.replace(f" {number}. ", ". ")
    sentences = []
    for sentence in text.strip().lower().split(". "):
        for character in ('"', "/", "\\", "'"):
            sentence = sentence.replace(character, "")
        sentence = _R2GEN_PUNCTUATION.sub("", sentence.strip().lower())
        sentence = " ".join(sentence.split())
        if sentence:
            sentences.append(sentence)
    return " . ".join(sentences) + " ." if sentences else ""


def clean_report_chinese(report: str, unit: Literal["char", "word"] = "char") -> str:
    """Chinese normalisation (module docstring).

    ``"两肺纹理清晰。心影不大。"`` -> ``"两 肺 纹 理 清 晰 。 心 影 不 大 。"`` (``unit="char"``).
    """
    text = unicodedata.normalize("NFKC", report).lower()
    sentences = []
    for sentence in _CHINESE_SENTENCE_END.split(text):
        # Punctuation and symbols go; letters, digits, CJK characters and spaces stay.
        kept = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in sentence)
        words = _segment_chinese(kept, unit)
        if words:
            sentences.append(" ".join(words))
    return " 。 ".join(sentences) + " 。" if sentences else ""


def normalize_report(text: str, language: str = "en") -> str:
    """The one normalisation of report text before scoring (module docstring); ``language`` "en" or "zh".

    Raises:
        ConfigError: an unknown ``language``.
    """
    if language == "en":
        return clean_report_english(text)
    if language == "zh":
        # "char", not "word": character cutting is idempotent on char-tokenised and on raw text and
        # needs no optional dependency.
        return clean_report_chinese(text, "char")
    raise ConfigError("language", f"unknown language {language!r} (use 'en' or 'zh')")


def _segment_chinese(sentence: str, unit: str) -> list[str]:
    if unit == "char":
        return _LATIN_RUN_OR_CHAR.findall(sentence)
    return [word for word in _jieba().lcut(sentence, HMM=True) if word.strip()]


def _jieba():
    try:
        import jieba
    except ImportError as exc:  # an optional dependency (extra "report")
        raise ConfigError("tokenizer.chinese_unit", "'word' needs jieba (pip install jieba)") from exc
    # jieba announces its dictionary build on stderr at INFO; keep library output quiet.
    jieba.setLogLevel(logging.WARNING)
    return jieba
