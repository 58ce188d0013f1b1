"""Scoring generated reports: NLG metrics (R2Gen's protocol) and clinical efficacy, in one table.

Takes predictions and references as text (never a model): :func:`score_reports` computes
BLEU-1..4 / METEOR / ROUGE-L / CIDEr with pycocoevalcap after :func:`cxrfm.text.normalize_report`,
and for English the clinical efficacy of :mod:`cxrfm.evaluation.clinical` (labels from the offline
CheXpert-style rule labeler, :data:`CE_CONVENTION`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxrfm.evaluation.chexpert_labeler import label_report
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
    findings = scores.get("findings")
    if findings:
        for name, entry in findings["per_finding"].items():
            lines.append(f"{'F1 ' + name:<20} {entry['f1']:.4f}")
        lines.append(f"{'finding macro F1':<20} {findings['macro_f1']:.4f}")
    lines.append(f"reports: {scores['num_reports']}" + (f" ({scores['distinct_reports']} distinct)" if "distinct_reports" in scores else ""))
    for name, value in scores.get("teacher_forced", {}).items():
        lines.append(f"{'TF ' + name:<20} {value:.4f}")
    if "alignment_score" in scores:
        lines.append(f"{'alignment score':<20} {scores['alignment_score']:.4f}")
    if "clinical_convention" in scores:
        lines.append(f"CE: {scores['clinical_convention']}")
    return "\n".join(lines)


# A finding of the phantom (the label it sets) -> the labeler observations that report it. The
# phantom's opacity sets Lung Opacity (and Consolidation); its nodule sets Nodule and Lung Lesion,
# which is the CheXpert observation a nodule mention gives.
PHANTOM_FINDINGS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly",),
    "Pleural Effusion": ("Pleural Effusion",),
    "Lung Opacity": ("Lung Opacity", "Consolidation"),
    "Pneumothorax": ("Pneumothorax",),
    "Nodule": ("Lung Lesion",),
}
FINDING_CONVENTION = (
    "the CheXpert-style labeler on each generated report; a finding is reported when one of its "
    "observations is positive (uncertain and negative are not); scored against the study's true "
    "labels; macro F1 is the mean over the findings with at least one true positive"
)


def finding_scores(
    predictions: Sequence[str], truth: Mapping[str, Sequence[float]], observations: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """Per-finding precision / recall / F1 of generated reports against true labels.

    Args:
        predictions: ``N`` generated reports.
        truth: finding name -> ``N`` true labels (1 present, anything else absent).
        observations: finding -> the labeler observations that report it (default
            :data:`PHANTOM_FINDINGS`).
    Returns:
        ``{"per_finding": {name: {precision, recall, f1, support, predicted}}, "macro_f1",
        "convention"}``.
    """
    observations = dict(observations or PHANTOM_FINDINGS)
    labelled = [label_report(text or "") for text in predictions]
    per_finding, f1s = {}, []
    for name, true in truth.items():
        if len(true) != len(predictions):
            raise ValueError(f"{name}: {len(true)} labels for {len(predictions)} reports")
        said = [any(labels.get(o) == 1 for o in observations.get(name, (name,))) for labels in labelled]
        present = [value == 1 for value in true]
        hits = sum(s and p for s, p in zip(said, present))
        precision = hits / sum(said) if any(said) else 0.0
        recall = hits / sum(present) if any(present) else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if any(present) and precision + recall > 0 else 0.0
        per_finding[name] = {"precision": precision, "recall": recall, "f1": f1, "support": sum(present), "predicted": sum(said)}
        if any(present):
            f1s.append(f1)
    macro = sum(f1s) / len(f1s) if f1s else float("nan")
    return {"per_finding": per_finding, "macro_f1": macro, "convention": FINDING_CONVENTION}
