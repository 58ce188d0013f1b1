"""Natural-language-generation metrics for reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap).

Normalisation protocol (R2Gen's): :func:`normalize_report` is :func:`cxrfm.text.normalize_report`,
the very cleaning the report tokenizer applies (R2Gen's ``clean_report_iu_xray`` for English, with
its ``..`` collapse and list-number removal; per-character cutting for Chinese), applied to
predictions *and* references. It is idempotent, so text that already went through the tokenizer
scores the same with or without it, and raw text scores as if it had been cleaned first.

* English: ``"1. The heart is normal.. 2. Lungs clear."`` -> ``"the heart is normal . lungs clear ."``;
  R2Gen's punctuation class also removes ``;<=>?@`` (so ``<unk>`` becomes ``unk`` on both sides).
  The ``"."`` separators are words and count in every n-gram.
* Chinese: NFKC, lowercase, punctuation removed, every CJK character one word, sentences joined by
  ``" 。 "`` (see :mod:`cxrfm.text`).
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
import shutil
from collections.abc import Sequence

from cxrfm import text as _text
from cxrfm.errors import ConfigError, CXRFMError

logger = logging.getLogger(__name__)

NLG_METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


class MetricError(CXRFMError, RuntimeError):
    """A metric cannot be computed here (missing Java or pycocoevalcap, bad inputs)."""


def normalize_report(text: str, language: str = "en") -> str:
    """:func:`cxrfm.text.normalize_report`, with an unknown language reported as a :class:`MetricError`."""
    try:
        return _text.normalize_report(text, language)
    except ConfigError as exc:
        raise MetricError(exc.reason) from None


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
