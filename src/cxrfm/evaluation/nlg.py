"""Natural-language-generation metrics for reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap).

Normalisation protocol (R2Gen's; applied to predictions *and* references by
:func:`normalize_report`, idempotent on text that already went through it):

* English: lowercase; split into sentences on ``". "``; in each sentence delete ``" / \\ '`` and
  R2Gen's punctuation class ``[.,?;*!%^&_+():-\\[\\]{}]`` (whose ``:-\\[`` range also removes
  ``;<=>?@`` -- so ``<unk>`` becomes ``unk`` on both sides); drop empty sentences; join with
  ``" . "`` and end with ``" ."``. The ``"."`` separators are words and count in every n-gram.
* Chinese: NFKC, punctuation/symbol characters other than ``。`` removed, whitespace collapsed;
  the text must already be space-separated words or characters (the tokenizer's output).
* No PTB tokenizer (R2Gen does not run it). Words = whitespace-split tokens.
* R2Gen scores the *truncated, vocabulary-mapped* references (``ReportTokenizer.reference_text``);
  passing raw reports instead gives different, lower numbers. Say which you used.

Scorers: BLEU with pycocoevalcap's ``closest`` reference length (corpus-level: n-gram counts are
pooled over all reports before the geometric mean); METEOR 1.5 (Java, ``-l en -norm``; English
only); ROUGE-L (beta 1.2, averaged over reports); CIDEr is pycocoevalcap's CIDEr-D (×10, Gaussian
length penalty), whose IDF comes from the references passed in -- it depends on the whole test set
and is 0 for a corpus of one report.
"""

from __future__ import annotations

import logging
import re
import shutil
import unicodedata
from collections.abc import Sequence

from cxrfm.errors import CXRFMError

logger = logging.getLogger(__name__)

NLG_METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

_R2GEN_PUNCTUATION = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


class MetricError(CXRFMError, RuntimeError):
    """A metric cannot be computed here (missing Java or pycocoevalcap, bad inputs)."""


def normalize_report(text: str, language: str = "en") -> str:
    """Apply the normalisation protocol of the module docstring to one report."""
    if language == "zh":
        text = unicodedata.normalize("NFKC", text)
        kept = "".join(c if c == "。" or unicodedata.category(c)[0] not in "PS" else " " for c in text)
        return " ".join(kept.split())
    if language != "en":
        raise MetricError(f"unknown language {language!r} (use 'en' or 'zh')")
    sentences = []
    for sentence in text.lower().split(". "):
        for character in ('"', "/", "\\", "'"):
            sentence = sentence.replace(character, "")
        sentence = " ".join(_R2GEN_PUNCTUATION.sub("", sentence).split())
        if sentence:
            sentences.append(sentence)
    return " . ".join(sentences) + " ." if sentences else ""


class MeteorScorer:
    """The METEOR 1.5 Java process, started once and reused (start-up takes several seconds).

    Use as a context manager or call :meth:`close`. Raises :class:`MetricError` without Java.
    """

    def __init__(self):
        if shutil.which("java") is None:
            raise MetricError(
                "METEOR needs a Java runtime (java on PATH; e.g. apt-get install default-jre-headless); "
                "or leave METEOR out of metrics="
            )
        Meteor = _import_scorer("meteor.meteor", "Meteor")
        try:
            self._meteor = Meteor()
        except OSError as exc:
            raise MetricError(f"cannot start METEOR (java): {exc}") from None

    def compute_score(self, references: dict, predictions: dict) -> tuple[float, list[float]]:
        try:
            return self._meteor.compute_score(references, predictions)
        except (OSError, ValueError, AssertionError) as exc:
            # The Java side died or answered garbage (e.g. out of memory).
            raise MetricError(f"METEOR failed: {exc!r}") from None

    def close(self) -> None:
        meteor = getattr(self, "_meteor", None)
        if meteor is not None:
            with meteor.lock:
                meteor.meteor_p.stdin.close()
                meteor.meteor_p.kill()
                meteor.meteor_p.wait()
            # pycocoevalcap's own __del__ repeats these steps later; on a closed pipe and a reaped
            # process they are no-ops.
            self._meteor = None

    def __enter__(self) -> "MeteorScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _import_scorer(module: str, name: str):
    try:
        imported = __import__(f"pycocoevalcap.{module}", fromlist=[name])
    except ImportError:
        raise MetricError("NLG metrics need pycocoevalcap (pip install pycocoevalcap)") from None
    return getattr(imported, name)


def compute_nlg_metrics(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    metrics: Sequence[str] = NLG_METRICS,
    language: str = "en",
    normalize: bool = True,
    meteor: MeteorScorer | None = None,
    per_report: bool = False,
) -> dict[str, float] | tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus scores ``{"BLEU-1": ..., "CIDEr": ...}`` of ``predictions`` against ``references``.

    ``references[i]`` is one string or a list of strings for report ``i``. ``meteor``: a running
    :class:`MeteorScorer` to reuse (else one is started and closed here). ``per_report=True`` also
    returns each metric's per-report scores (BLEU's are per-report BLEU, not corpus shares).
    """
    unknown = sorted(set(metrics) - set(NLG_METRICS))
    if unknown:
        raise MetricError(f"unknown metrics {unknown} (known: {', '.join(NLG_METRICS)})")
    if len(predictions) != len(references):
        raise MetricError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise MetricError("no reports to score")
    if "METEOR" in metrics and language != "en":
        raise MetricError("METEOR 1.5 is English-only here; leave it out of metrics= for Chinese")
    prepare = (lambda text: normalize_report(text, language)) if normalize else (lambda text: text)
    hypotheses = {i: [prepare(p)] for i, p in enumerate(predictions)}
    gold = {}
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise MetricError(f"report {i} has no reference")
        gold[i] = [prepare(r) for r in refs]
    scores: dict[str, float] = {}
    details: dict[str, list[float]] = {}
    if any(m.startswith("BLEU") for m in metrics):
        bleu, bleu_each = _import_scorer("bleu.bleu", "Bleu")(4).compute_score(gold, hypotheses, verbose=0)
        for n in range(4):
            name = f"BLEU-{n + 1}"
            if name in metrics:
                scores[name], details[name] = float(bleu[n]), [float(s) for s in bleu_each[n]]
    if "METEOR" in metrics:
        scorer = meteor or MeteorScorer()
        try:
            score, each = scorer.compute_score(gold, hypotheses)
        finally:
            if meteor is None:
                scorer.close()
        scores["METEOR"], details["METEOR"] = float(score), [float(s) for s in each]
    for name, module, cls in (("ROUGE-L", "rouge.rouge", "Rouge"), ("CIDEr", "cider.cider", "Cider")):
        if name in metrics:
            score, each = _import_scorer(module, cls)().compute_score(gold, hypotheses)
            scores[name], details[name] = float(score), [float(s) for s in each]
    ordered = {name: scores[name] for name in NLG_METRICS if name in scores}
    return (ordered, details) if per_report else ordered
