"""Scoring generated reports: NLG metrics (R2Gen's protocol) and clinical efficacy, in one table.

Takes predictions and references as text (never a model): :func:`score_reports` computes
BLEU-1..4 / METEOR / ROUGE-L / CIDEr with pycocoevalcap after :func:`cxrfm.text.normalize_report`,
and for English the clinical efficacy of :mod:`cxrfm.evaluation.clinical` (labels from the offline
CheXpert-style rule labeler, :data:`CE_CONVENTION`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxrfm.evaluation.clinical import clinical_efficacy_from_reports
from cxrfm.evaluation.nlg import NLG_METRICS, compute_nlg_metrics

CE_CONVENTION = (
    "clinical efficacy over the 14 CheXpert observations, labels from cxrfm's offline CheXpert-style "
    "rule labeler (not CheXbert) on generated and reference reports; positive -> 1, uncertain / "
    "negative / blank -> 0; *_micro and *_macro as R2Gen (sklearn-style), *_example as PromptMRG "
    "(per-report, positives only)"
)


def score_reports(
    predictions: Sequence[str], references: Sequence[str], *, language: str = "en", meteor: bool = True, clinical: bool = True
) -> dict[str, Any]:
    """NLG metrics (``nlg``) and, for English, clinical efficacy (``clinical``) with its convention."""
    names = [m for m in NLG_METRICS if m != "METEOR" or (meteor and language == "en")]
    result: dict[str, Any] = {
        "num_reports": len(predictions),
        "language": language,
        "nlg": compute_nlg_metrics(predictions, references, metrics=names, language=language),
        "nlg_protocol": "pycocoevalcap, R2Gen normalisation, no PTB tokenizer; corpus BLEU with closest reference length",
    }
    if clinical and language == "en":
        result["clinical"] = clinical_efficacy_from_reports(list(predictions), list(references))
        result["clinical_convention"] = CE_CONVENTION
    elif clinical:
        result["clinical_convention"] = "not computed: the CheXpert-style labeler reads English only"
    return result


def metrics_table(scores: Mapping[str, Any]) -> str:
    """A two-column text table of :func:`score_reports` output (per-label CE left out)."""
    lines = [f"{'metric':<20} value", f"{'-' * 20} ------"]
    lines += [f"{name:<20} {value:.4f}" for name, value in scores["nlg"].items()]
    for name, value in scores.get("clinical", {}).items():
        if isinstance(value, float):
            lines.append(f"{'CE ' + name:<20} {value:.4f}")
    lines.append(f"reports: {scores['num_reports']}")
    for name, value in scores.get("teacher_forced", {}).items():
        lines.append(f"{'TF ' + name:<20} {value:.4f}")
    if "clinical_convention" in scores:
        lines.append(f"CE: {scores['clinical_convention']}")
    return "\n".join(lines)
