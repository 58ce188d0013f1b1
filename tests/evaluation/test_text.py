"""One report normaliser for the tokenizer and the NLG metrics (cxrfm.text.normalize_report).

Scores of text that already went through the tokenizer's cleaning must not change, so
``normalize_report`` has to be the identity on cleaned text (checked on every IU-Xray report and on
templated phantom reports), and raw text must normalise to what the tokenizer would have made of it.
"""

from __future__ import annotations

import json

import pytest

from cxrfm.errors import ConfigError
from cxrfm.text import clean_report_chinese, clean_report_english, normalize_report

RAW_NUMBERED = "1. The heart is normal in size.. 2. Lungs are clear.. 3. No effusion."


def test_raw_numbered_text_normalises_to_no_digit_tokens():
    words = normalize_report(RAW_NUMBERED, "en").split()
    assert not [w for w in words if any(c.isdigit() for c in w)], words
    assert normalize_report(RAW_NUMBERED, "en") == "the heart is normal in size . lungs are clear . no effusion ."
    assert normalize_report(RAW_NUMBERED, "en") == clean_report_english(RAW_NUMBERED)


def test_chinese_raw_text_normalises_like_the_tokenizer():
    raw = "检查所见：两肺纹理清晰，心影不大。ＣＴ示结节！"
    assert normalize_report(raw, "zh") == clean_report_chinese(raw, "char")
    assert normalize_report(raw, "zh") == "检 查 所 见 两 肺 纹 理 清 晰 心 影 不 大 。 ct 示 结 节 。"
    # Already char-tokenised text (the tokenizer's output) is left as it is.
    assert normalize_report("心 影 不 大 ， 两 肺 清 晰 。", "zh") == "心 影 不 大 两 肺 清 晰 。"


def test_unknown_language_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown language 'fr'"):
        normalize_report("x", "fr")


def _phantom_reports() -> list[tuple[str, str]]:
    from cxrfm.data.phantom import generate_phantom

    probs = {"Pleural Effusion": 0.5, "Cardiomegaly": 0.5, "Pneumothorax": 0.3, "Consolidation": 0.3}
    cases = [generate_phantom(seed=i, size=(64, 64), finding_probs=probs) for i in range(12)]
    return [(f"{c.findings_en} {c.impression_en}", c.report_zh) for c in cases]


def test_normalize_is_identity_on_cleaned_phantom_reports():
    reports = _phantom_reports()
    for english, chinese in reports:
        cleaned_en = clean_report_english(english)
        assert normalize_report(cleaned_en, "en") == cleaned_en
        cleaned_zh = clean_report_chinese(chinese, "char")
        assert normalize_report(cleaned_zh, "zh") == cleaned_zh
        # And idempotent on the raw text itself.
        for text, language in ((english, "en"), (chinese, "zh")):
            once = normalize_report(text, language)
            assert normalize_report(once, language) == once


@pytest.mark.realdata
def test_normalize_is_identity_on_every_cleaned_iu_xray_report(shared_data_dir):
    path = shared_data_dir / "iu_xray" / "annotation.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    annotation = json.loads(path.read_text())
    reports = [entry["report"] for split in annotation.values() for entry in split]
    assert len(reports) > 2900
    changed = [r for r in reports if normalize_report(clean_report_english(r), "en") != clean_report_english(r)]
    assert not changed, changed[:3]
    # The Chinese rule must not touch char-tokenised text either (IU text through the Chinese cleaner).
    changed_zh = [r for r in reports if normalize_report(clean_report_chinese(r), "zh") != clean_report_chinese(r)]
    assert not changed_zh, changed_zh[:3]
