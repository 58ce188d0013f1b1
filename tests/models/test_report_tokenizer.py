"""Report tokenisers: R2Gen's exact English rules, <unk>, round trips, Chinese char/jieba modes, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from cxrfm.data.iu_xray import read_r2gen_reports
from cxrfm.models.report.tokenizer import SPECIAL_TOKENS, ReportTokenizer, TokenizerConfig
from cxrfm.text import clean_report_chinese, clean_report_english
from cxrfm.errors import CheckpointError, DatasetError

TRAIN = [
    "The heart is normal in size. The lungs are clear.",
    "The heart is enlarged. No pleural effusion.",
    "The lungs are clear. No pneumothorax.",
    "Heart size normal. The lungs are clear.",
]


def test_english_cleaning_follows_r2gen_rules_exactly():
    text = '1. Heart size is normal.. 2. No effusion; lungs/clear. "Mild" x-XXXX @home [old] 3.5 cm'
    # "1. " deleted, " 2. " -> ". ", ".." collapsed, "/" and quotes deleted, ";@[]" and "." removed
    # inside sentences (R2Gen's ":-\[" range), "-" and digits kept.
    assert clean_report_english(text) == "heart size is normal . no effusion lungsclear . mild x-xxxx home old 35 cm ."
    assert clean_report_english("The Heart,  is (normal)!") == "the heart is normal ."
    # Empty sentences are dropped (R2Gen would leave ". .").
    assert clean_report_english("Normal. . Clear.") == "normal . clear ."
    assert clean_report_english("") == ""


def test_encode_gives_exact_ids_with_unk_and_specials():
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=2))
    assert tokenizer.vocabulary[:4] == SPECIAL_TOKENS
    # Words seen >= 2 times, sorted after the specials.
    assert tokenizer.vocabulary[4:] == (".", "are", "clear", "heart", "is", "lungs", "no", "normal", "size", "the")
    ids = tokenizer.encode("The heart is TINY. Lungs are clear.")
    words = ["<bos>", "the", "heart", "is", "<unk>", ".", "lungs", "are", "clear", ".", "<eos>"]
    assert ids == [tokenizer.vocabulary.index(w) for w in words]
    assert tokenizer.decode(ids) == "the heart is <unk> . lungs are clear ."
    assert tokenizer.reference_text("The heart is TINY.") == "the heart is <unk> ."


def test_truncation_drops_eos_like_r2gen_and_batches_pad():
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=1, max_length=5))
    ids = tokenizer.encode("The heart is normal in size.")
    assert len(ids) == 5 and ids[0] == tokenizer.bos_id and tokenizer.eos_id not in ids
    batch = tokenizer.batch_encode(["the heart", "the heart is normal in size"])
    assert batch.shape == (2, 5) and batch.dtype == torch.long
    short = tokenizer.encode("the")  # <bos> the . <eos>
    assert tokenizer.batch_encode(["the", "the heart is normal in size"])[0].tolist() == short + [tokenizer.pad_id]


def test_decode_stops_at_eos_and_round_trips_known_text():
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=1))
    text = "the heart is enlarged . no pleural effusion ."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(torch.tensor(ids + [5, 6, 0, 0])) == text  # stops at <eos>, tensors accepted
    assert tokenizer.decode(ids, skip_special=False).startswith("<bos> the")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([1, 10_000])


def test_save_and_load_round_trip(tmp_path):
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=2, max_length=30))
    path = tokenizer.save_pretrained(tmp_path)
    assert json.loads(path.read_text())["vocabulary"] == list(tokenizer.vocabulary)
    loaded = ReportTokenizer.from_pretrained(tmp_path)
    assert loaded.vocabulary == tokenizer.vocabulary and loaded.config == tokenizer.config
    assert loaded.encode(TRAIN[1]) == tokenizer.encode(TRAIN[1])
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed"):
        ReportTokenizer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        ReportTokenizer.from_pretrained(tmp_path / "missing")


def test_chinese_character_and_jieba_word_modes():
    report = "两肺纹理清晰，心影不大。ＣＴ示结节！"
    # NFKC turns the full-width "ＣＴ" into "ct", a Latin run stays one token.
    assert clean_report_chinese(report, "char") == "两 肺 纹 理 清 晰 心 影 不 大 。 ct 示 结 节 。"
    tokenizer = ReportTokenizer.build([report] * 3, TokenizerConfig(language="zh", chinese_unit="char"))
    assert tokenizer.decode(tokenizer.encode("心影不大。")) == "心 影 不 大 。"
    assert tokenizer.decode(tokenizer.encode("心影增大。")) == "心 影 <unk> 大 。"
    pytest.importorskip("jieba")  # word mode needs the optional jieba (extra "report")
    words = clean_report_chinese(report, "word").split()
    assert "".join(w for w in words if w != "。") == "两肺纹理清晰心影不大ct示结节"
    assert words.count("。") == 2 and "两肺" in words and len(words) < 15  # jieba merges characters into words


def test_read_r2gen_reports_errors(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps({"train": [{"report": "a b"}], "val": []}))
    assert read_r2gen_reports(path) == ["a b"]
    with pytest.raises(DatasetError, match="no split 'test'"):
        read_r2gen_reports(path, "test")
    with pytest.raises(DatasetError, match="not found"):
        read_r2gen_reports(tmp_path / "none.json")


@pytest.mark.realdata
def test_iu_xray_vocabulary_matches_r2gen(shared_data_dir):
    reports = read_r2gen_reports(shared_data_dir / "iu_xray" / "annotation.json", "train")
    assert len(reports) == 2069
    tokenizer = ReportTokenizer.build(reports)  # threshold 3, as R2Gen on IU-Xray
    # R2Gen's IU vocabulary: 759 words + <unk> (its ids 1..760); ours adds <pad>/<bos>/<eos>.
    assert len(tokenizer) == 763
    lengths = [len(tokenizer.encode(r)) for r in reports]
    assert max(lengths) == 60 and sum(n == 60 for n in lengths) > 100
