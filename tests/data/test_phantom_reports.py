"""Templated phantom reports: consistent with the findings, varied, in English and Chinese."""

from __future__ import annotations

import numpy as np

from cxrfm.data.phantom.reports import compose_report


def report(findings, seed=0):
    return compose_report(findings, np.random.default_rng(seed))


def test_normal_report_mentions_no_abnormality():
    text = report({})
    assert "effusion" not in text.impression_en.lower()
    for word in ("enlarged", "consolidation in", "nodule", "There is a"):
        assert word not in text.findings_en
    assert "积液，" not in text.findings_zh and "增大" not in text.findings_zh


def test_findings_are_reported_with_side_size_and_lobe():
    findings = {
        "Pleural Effusion": {"severity": 0.9, "side": "bilateral", "size": "large"},
        "Pneumothorax": {"severity": 0.3, "side": "left", "size": "small", "collapse": 0.22},
        "Nodule": {"severity": 0.5, "lobe": "RLL", "diameter_cm": 1.8},
        "Cardiomegaly": {"severity": 0.2, "ctr": 0.55},
    }
    text = report(findings)
    en = text.findings_en + " " + text.impression_en
    assert "bilateral" in en and "large" in en.lower() and "effusion" in en
    assert "left" in en and "pneumothorax" in en.lower() and "small" in en.lower()
    assert "1.8 cm" in en and "right lower lobe" in en
    assert "cardiomegaly" in en.lower() or "enlarged" in en.lower()
    zh = text.findings_zh + text.impression_zh
    assert "双侧" in zh and "大量" in zh and "左侧" in zh and "气胸" in zh and "20%" in zh
    assert "右肺下叶" in zh and "1.8cm" in zh and "心影" in zh
    # The impression lists the most urgent finding first.
    assert text.impression_en.lower().lstrip("1. ").startswith("small left pneumothorax")


def test_wording_varies_with_the_generator():
    texts = {report({}, seed).findings_en for seed in range(12)}
    assert len(texts) > 6
    zh = {report({"Consolidation": {"severity": 0.5, "lobe": "LUL"}}, seed).findings_zh for seed in range(12)}
    assert len(zh) > 2 and all("左肺上叶" in t for t in zh)
