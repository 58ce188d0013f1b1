"""The main job's report stage, shrunk to seconds: summary, metrics and the example figure."""

from __future__ import annotations

import json

from cxrfm.models.vit import VisionTransformer, vit_config
from cxrfm.recipes.demo import run_report_demo

SMALL = [
    "model.image_size=null", "model.overrides.d_model=32", "model.overrides.d_ff=32",
    "data.num_samples.train=16", "data.num_samples.val=4", "data.num_samples.test=5", "train.max_steps=4", "train.validate_every=2",
    "train.batch_size=8", "evaluation.meteor=false",
]


def test_report_demo_writes_figure_and_summary(tmp_path):
    encoder_dir = tmp_path / "pretrain" / "encoder"
    VisionTransformer(vit_config("vit-tiny-cpu", image_size=(32, 32), depth=1, embed_dim=32)).save_pretrained(encoder_dir)
    summary = run_report_demo(tmp_path, encoder_dir, seed=3, overrides=SMALL)
    assert (tmp_path / summary["figure"]).stat().st_size > 10_000
    assert summary["figure"] == "figures/report_examples.png" and summary["encoder"] == str(encoder_dir)
    assert summary["studies"] == {"train": 16, "val": 4, "test": 5}
    assert set(summary["test_nlg"]) >= {"BLEU-4", "CIDEr"} and "f1_micro" in summary["test_clinical"]
    assert {"loss", "loss_swapped_images", "swapped_gap"} <= set(summary["teacher_forced"])
    assert set(summary["finding_f1"]) <= {"Cardiomegaly", "Pleural Effusion", "Lung Opacity", "Pneumothorax", "Nodule"}
    assert 1 <= summary["distinct_predictions"] <= 5
    json.dumps(summary)  # JSON-ready for the demo's summary.json
    config = (tmp_path / "report" / "config.yaml").read_text()
    assert "seed: 3" in config and str(encoder_dir) in config
