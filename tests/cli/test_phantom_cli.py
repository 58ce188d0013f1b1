"""``cxrfm phantom`` writes images, masks and a manifest that the manifest dataset reads."""

from __future__ import annotations

import csv
import json

import numpy as np

from cxrfm.cli.main import main
from cxrfm.data.labels import FINDINGS
from cxrfm.data.manifest import ManifestDataset
from cxrfm.data.phantom import DEFAULT_FINDING_PROBS, generate_phantom
from cxrfm.io import read_image, read_mask


def test_phantom_verb_writes_a_readable_folder(tmp_path):
    out = tmp_path / "phantoms"
    code = main(["phantom", "--out", str(out), "--count", "3", "--size", "48", "64", "--seed", "11", "--no-gallery"])
    assert code == 0
    with open(out / "manifest.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and [int(r["seed"]) for r in rows] == [11, 12, 13]
    for column in ("image", "mask", "split", "findings", "impression", "report_zh", *FINDINGS):
        assert column in rows[0]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[0]["report_zh"] == rows[0]["report_zh"] and "检查所见" in lines[0]["report_zh"]

    expected = generate_phantom(11, (48, 64), finding_probs=DEFAULT_FINDING_PROBS)
    assert np.abs(read_image(out / rows[0]["image"]) - expected.image).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(read_mask(out / rows[0]["mask"]), expected.lung_mask)
    assert np.array_equal(read_mask(out / rows[0]["chest_mask"]), expected.chest_mask)

    dataset = ManifestDataset(out)
    sample = dataset[0]
    assert sample.image.shape == (1, 48, 64) and sample.lung_mask is not None
    assert list(dataset.label_names) == list(FINDINGS)
    assert np.array_equal(sample.labels.numpy(), expected.labels)
    assert sample.findings == expected.findings_en and sample.meta["report_zh"] == expected.report_zh


def test_phantom_verb_rejects_unknown_findings(tmp_path):
    assert main(["phantom", "--out", str(tmp_path / "x"), "--count", "1", "--finding", "Edema=0.5"]) == 2
    assert main(["phantom", "--out", str(tmp_path / "y"), "--count", "1", "--finding", "Nodule=two"]) == 2
