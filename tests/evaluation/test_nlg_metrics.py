"""NLG metrics: normalisation protocol, hand-checked BLEU, agreement with direct pycocoevalcap calls,
METEOR through one shared Java process, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from cxrfm.errors import CXRFMError
from cxrfm.evaluation import nlg
from cxrfm.evaluation.nlg import MeteorScorer, MetricError, compute_nlg_metrics, normalize_report

pytest.importorskip("pycocoevalcap")

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")


@pytest.fixture(scope="module")
def meteor():
    if shutil.which("java") is None:
        pytest.skip("METEOR needs Java")
    with MeteorScorer() as scorer:  # the jar takes seconds to start: once per module
        yield scorer


PREDICTIONS = [
    "the heart is normal in size . the lungs are clear .",
    "no pleural effusion or pneumothorax .",
    "mild cardiomegaly . no focal consolidation .",
]
REFERENCES = [
    "the heart size is normal . the lungs are clear .",
    "there is no pleural effusion or pneumothorax .",
    "the heart is mildly enlarged . there is no focal airspace consolidation .",
]


def test_normalisation_protocol():
    assert normalize_report("The Heart is NORMAL. No effusion; (none)!") == "the heart is normal . no effusion none ."
    assert normalize_report("Lungs/clear.  <unk> x-XXXX 3.5 cm.") == "lungsclear . unk x-xxxx 35 cm ."
    for text in PREDICTIONS + REFERENCES:  # idempotent on already-normalised text
        assert normalize_report(text) == text
    assert normalize_report("心 影 不 大 ， 两 肺 清 晰 。", "zh") == "心 影 不 大 两 肺 清 晰 。"
    with pytest.raises(MetricError, match="language"):
        normalize_report("x", "fr")


def test_bleu_hand_computed_and_identical_pair():
    scores = compute_nlg_metrics(
        ["the cat sat on the mat"], ["the cat is on the mat"], metrics=["BLEU-1", "BLEU-2"], normalize=False
    )
    # Unigrams: the, cat, on, the, mat match of 6 -> 5/6; bigrams: "the cat", "on the", "the mat" of 5 -> 3/5.
    assert scores["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert scores["BLEU-2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5, abs=1e-6)
    same = compute_nlg_metrics(PREDICTIONS, PREDICTIONS, metrics=["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"])
    assert same["BLEU-1"] == pytest.approx(1.0, abs=1e-6) and same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE-L"] == pytest.approx(1.0)
    assert same["CIDEr"] == pytest.approx(10.0, abs=1e-6)  # CIDEr-D is ×10


def test_brevity_penalty_and_disjoint_text():
    short = compute_nlg_metrics(["the heart"], ["the heart is normal"], metrics=["BLEU-1"], normalize=False)
    # Both words match (precision 1), brevity penalty exp(1 - 4/2).
    assert short["BLEU-1"] == pytest.approx(2.718281828 ** (1 - 2), abs=1e-6)
    disjoint = compute_nlg_metrics(["a b c"], ["x y z"], metrics=["BLEU-1", "ROUGE-L"], normalize=False)
    assert disjoint["BLEU-1"] < 1e-6 and disjoint["ROUGE-L"] == 0.0


def test_matches_direct_pycocoevalcap_calls():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [r] for i, r in enumerate(REFERENCES)}
    res = {i: [p] for i, p in enumerate(PREDICTIONS)}
    metrics = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    ours = compute_nlg_metrics(PREDICTIONS, REFERENCES, metrics=metrics)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [ours[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert ours["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    assert ours["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert list(ours) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]


def test_multiple_references_and_per_report_scores():
    scores, each = compute_nlg_metrics(
        ["no effusion ."], [["there is no effusion .", "no effusion ."]], metrics=["BLEU-1", "ROUGE-L"], per_report=True
    )
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6) and each["ROUGE-L"] == [pytest.approx(1.0)]


def test_input_errors_are_metric_errors():
    with pytest.raises(MetricError, match="2 predictions but 1 references"):
        compute_nlg_metrics(["a", "b"], ["a"])
    with pytest.raises(MetricError, match="unknown metrics"):
        compute_nlg_metrics(["a"], ["a"], metrics=["BLEU-5"])
    with pytest.raises(MetricError, match="English-only"):
        compute_nlg_metrics(["心 影"], ["心 影"], language="zh")
    assert issubclass(MetricError, CXRFMError) and issubclass(MetricError, RuntimeError)


def test_missing_java_raises_metric_error(monkeypatch):
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    with pytest.raises(MetricError, match="METEOR needs a Java runtime"):
        compute_nlg_metrics(["a b"], ["a b"], metrics=["METEOR"])


@needs_java
def test_meteor_values(meteor):
    scores = compute_nlg_metrics(PREDICTIONS, REFERENCES, meteor=meteor)
    assert list(scores) == list(nlg.NLG_METRICS)
    assert 0.2 < scores["METEOR"] < 0.8
    same = compute_nlg_metrics(PREDICTIONS, PREDICTIONS, metrics=["METEOR"], meteor=meteor)
    assert same["METEOR"] == pytest.approx(1.0, abs=1e-3)
    disjoint = compute_nlg_metrics(["a b c ."], ["x y z ."], metrics=["METEOR"], meteor=meteor, normalize=False)
    assert disjoint["METEOR"] < 0.3


# Raw reports with R2Gen's list numbering: normalisation must remove "1." / "2." before scoring.
RAW_PREDICTIONS = ["1. The heart is normal in size.. 2. The lungs are clear.", "No pleural effusion or pneumothorax."]
RAW_REFERENCES = ["1. Heart size is normal. 2. Lungs are clear..", "1. There is no pleural effusion. 2. No pneumothorax."]


@needs_java
def test_meteor_matches_a_direct_pycocoevalcap_meteor_call(meteor):
    from pycocoevalcap.meteor.meteor import Meteor

    from cxrfm.text import clean_report_english

    # The reference side: pycocoevalcap's own scorer (its own Java process) on the tokenizer's cleaning.
    gts = {i: [clean_report_english(r)] for i, r in enumerate(RAW_REFERENCES)}
    res = {i: [clean_report_english(p)] for i, p in enumerate(RAW_PREDICTIONS)}
    direct = Meteor()
    try:
        expected, expected_each = direct.compute_score(gts, res)
    finally:
        with direct.lock:
            direct.meteor_p.stdin.close()
            direct.meteor_p.kill()
            direct.meteor_p.wait()
    ours, each = compute_nlg_metrics(RAW_PREDICTIONS, RAW_REFERENCES, metrics=["METEOR"], meteor=meteor, per_report=True)
    assert ours["METEOR"] == pytest.approx(expected, abs=1e-9)
    assert each["METEOR"] == pytest.approx(expected_each, abs=1e-9)


def test_scoring_raw_numbered_text_equals_scoring_cleaned_text():
    from cxrfm.text import clean_report_english

    metrics = ["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"]
    raw = compute_nlg_metrics(RAW_PREDICTIONS, RAW_REFERENCES, metrics=metrics)
    cleaned = compute_nlg_metrics(
        [clean_report_english(p) for p in RAW_PREDICTIONS], [clean_report_english(r) for r in RAW_REFERENCES],
        metrics=metrics, normalize=False,
    )
    assert raw == pytest.approx(cleaned)
    assert normalize_report(RAW_PREDICTIONS[0]) == "the heart is normal in size . the lungs are clear ."


def test_nlg_normalize_report_is_the_shared_normaliser():
    from cxrfm import text

    for report in RAW_PREDICTIONS + RAW_REFERENCES + PREDICTIONS:
        assert normalize_report(report) == text.normalize_report(report, "en")
    assert normalize_report("心影不大。", "zh") == text.normalize_report("心影不大。", "zh") == "心 影 不 大 。"


@pytest.mark.realdata
def test_normalisation_agrees_with_the_tokenizer_on_iu_reports(shared_data_dir):
    from cxrfm.text import clean_report_english

    annotation = json.loads((shared_data_dir / "iu_xray" / "annotation.json").read_text())
    reports = [entry["report"] for entry in annotation["test"]]
    cleaned = [clean_report_english(r) for r in reports]
    assert all(normalize_report(c) == c for c in cleaned)
    scores = compute_nlg_metrics(cleaned, reports, metrics=["BLEU-4", "ROUGE-L"])
    # Raw references differ from their cleaned form only by R2Gen's numbering rules.
    assert scores["BLEU-4"] > 0.98 and scores["ROUGE-L"] > 0.98
