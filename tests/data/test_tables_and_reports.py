"""Metadata-table helpers and report section parsing."""

from __future__ import annotations

import gzip
import math
from collections import Counter

import pytest

from cxrfm.data.reports import findings_and_impression, parse_report_sections
from cxrfm.data.tables import (
    hash_split,
    normalise_split,
    normalise_view,
    parse_age,
    parse_label_value,
    read_csv_rows,
)
from cxrfm.errors import DatasetError


def test_hash_split_is_deterministic_and_follows_the_fractions():
    keys = [f"patient-{i}" for i in range(4000)]
    splits = [hash_split(k, (0.7, 0.2, 0.1), salt="x-") for k in keys]
    assert splits == [hash_split(k, (0.7, 0.2, 0.1), salt="x-") for k in keys]
    counts = Counter(splits)
    assert abs(counts["train"] / 4000 - 0.7) < 0.03 and abs(counts["test"] / 4000 - 0.1) < 0.02
    assert splits != [hash_split(k, (0.7, 0.2, 0.1), salt="y-") for k in keys]  # the salt matters
    assert {hash_split(k, (0.0, 1.0, 0.0)) for k in keys[:50]} == {"val"}
    with pytest.raises(ValueError, match="sum"):
        hash_split("a", (0.5, 0.2, 0.2))


def test_normalisers_and_value_parsers():
    assert [normalise_split(s) for s in ("validate", "Valid", "training", "test", "", None)] == [
        "val",
        "val",
        "train",
        "test",
        None,
        None,
    ]
    assert [normalise_view(v) for v in ("L", "ll", "ap supine", " pa ", "")] == ["LATERAL", "LATERAL", "AP SUPINE", "PA", None]
    assert [parse_label_value(v, "f", 1, "c") for v in ("1.0", "-1", "0", True, "no")] == [1.0, -1.0, 0.0, 1.0, 0.0]
    assert math.isnan(parse_label_value("", "f", 1, "c"))
    assert [parse_age(v) for v in ("058Y", "41", 63.0, "", None, "unknown")] == [58, 41, 63, None, None, None]


def test_gzipped_csv_and_errors_name_file_and_line(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("a,b\n1,2\n\n3,4\n")
    header, rows = read_csv_rows(path, required=("a",))
    assert header == ["a", "b"] and rows == [(2, {"a": "1", "b": "2"}), (4, {"a": "3", "b": "4"})]
    with pytest.raises(DatasetError, match=r"t.csv.gz: missing column\(s\) \['c'\]"):
        read_csv_rows(path, required=("c",))
    with pytest.raises(DatasetError, match="absent.csv: file not found"):
        read_csv_rows(tmp_path / "absent.csv")


def test_report_sections():
    report = (
        "FINAL REPORT\nEXAMINATION: CHEST (PA AND LAT)\nINDICATION: ___ with cough\n"
        "FINDINGS:\n  Lungs are clear.\n  No effusion.\nIMPRESSION: No acute process.\n"
    )
    sections = parse_report_sections(report)
    assert sections["preamble"] == "FINAL REPORT"
    assert sections["EXAMINATION"] == "CHEST (PA AND LAT)" and sections["INDICATION"] == "___ with cough"
    assert findings_and_impression(report) == ("Lungs are clear. No effusion.", "No acute process.")
    assert findings_and_impression("IMPRESSION: Stable.") == (None, "Stable.")
    assert findings_and_impression("FINDINGS AND IMPRESSION: Normal chest.") == ("Normal chest.", None)
    assert findings_and_impression("no headers at all") == (None, None)
