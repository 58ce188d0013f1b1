"""The IU-Xray path end to end on the real reports and R2Gen split, with stand-in images.

The shared set has no IU images, so the first studies of each split get stand-in PNGs (phantoms) in
the R2Gen layout ``images/<id>/0.png, 1.png`` under tmp; the run reads two views per study.
"""

from __future__ import annotations

import json

import pytest

from cxrfm.cli.report import main
from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.models.dvae import DVAE_PRESETS, DiscreteVAE, DiscreteVAEConfig
from cxrfm.models.report import UARGenerator, load_report_generator
from cxrfm.recipes.report import ReportTrainConfig, build_report_split, run_report_training

from report_configs import tiny_report_config, write_iu_standins

STUDIES = {"train": 8, "val": 3, "test": 3}


@pytest.mark.realdata
def test_iu_xray_train_generate_evaluate_with_standin_images(shared_data_dir, tmp_path, capsys):
    root = shared_data_dir / "iu_xray"
    ids = write_iu_standins(json.loads((root / "annotation.json").read_text()), tmp_path / "images", STUDIES)
    data = {
        "kind": "iu-xray", "root": str(root), "cache": True, "options": {"image_root": str(tmp_path / "images"), "images_required": False},
        "max_samples": dict(STUDIES),
    }
    config = tiny_report_config(tmp_path / "run", data=data, model={"views_per_study": 2}, train={"max_steps": 8, "validate_every": 4})

    val = build_report_split(config.data, "val", (32, 32), 2, "findings", "en")
    first = val[0]
    assert first.meta["has_image"] and len(first.meta["extra_images"]) == 1 and first.image.shape == (1, 32, 32)
    assert first.meta["study_id"] == ids["val"][0] and val.texts[0] == first.findings  # the real R2Gen report

    run = run_report_training(config)
    assert run.split_sizes == STUDIES
    rows = [json.loads(line) for line in run.predictions_path.read_text().splitlines()]
    assert [row["id"] for row in rows] == ids["test"]

    metrics = tmp_path / "metrics.json"
    arguments = [
        "evaluate", "--predictions", str(run.predictions_path), "--dataset", "iu-xray", "--root", str(root),
        "--split", "test", "--tokenizer", str(run.model_dir), "--no-meteor", "--out", str(metrics),
    ]
    assert main(arguments) == 0
    scores = json.loads(metrics.read_text())
    # References from the dataset split, mapped by the model's tokenizer = the run's own scoring.
    assert scores["nlg"] == pytest.approx(run.test_scores["nlg"])
    assert "iu-xray test" in capsys.readouterr().out


@pytest.mark.realdata
def test_uar_iu_xray_config_runs_on_two_view_standins(shared_data_dir, tmp_path):
    """The shipped ``uar-iu-xray`` config (two views, 128 -> crop 112, LSU + CRA + TIR, two stages) on
    the real IU reports and split, with stand-in PNGs and an untrained tiny dVAE (the path, not the
    scores, is under test), shrunk only in size and steps."""
    root = shared_data_dir / "iu_xray"
    ids = write_iu_standins(json.loads((root / "annotation.json").read_text()), tmp_path / "images", STUDIES, size=128)
    DiscreteVAE(DiscreteVAEConfig(image_size=112, **DVAE_PRESETS["dvae-tiny-cpu"])).save_pretrained(tmp_path / "dvae")
    two_stages = ("stages=[{max_steps: 3, ce: 1.0, alignment: 1.0, mask: 0.0, refine: false}, "
                  "{max_steps: 3, ce: 1.0, alignment: 1.0, mask: 1.0, refine: true}]")
    config = load_config(ReportTrainConfig, resolve_config_path("uar-iu-xray"), [
        f"data.root={root}", f"data.options.image_root={tmp_path / 'images'}", "data.options.images_required=false",
        "data.cache=true", f"data.max_samples={STUDIES}", f"model.uar.dvae_dir={tmp_path / 'dvae'}",
        "model.overrides={d_model: 32, num_heads: 2, d_ff: 32, num_encoder_layers: 1, num_decoder_layers: 1, basis_size: 64, cra_heads: 2}",
        two_stages, "train.batch_size=4", "train.validate_every=3", "train.checkpoint_every=0", "train.precision=fp32",
        "train.num_workers=0", "train.tensorboard=false", "train.progress_bar=false", "train.warmup_steps=1",
        "decoding.batch_size=4", "evaluation.meteor=false", "evaluation.val_beam_size=1", f"train.output_dir={tmp_path / 'run'}",
    ])
    run = run_report_training(config)
    assert run.split_sizes == STUDIES
    model = load_report_generator(run.model_dir)
    assert isinstance(model, UARGenerator) and model.config.views_per_study == 2 and model.config.num_visual_tokens == 2 * 196
    assert model.refine  # the second stage trained with TIR's mask on
    rows = [json.loads(line) for line in run.predictions_path.read_text().splitlines()]
    assert [row["id"] for row in rows] == ids["test"]
    assert 0.0 <= run.test_scores["alignment_score"] <= 1.0
