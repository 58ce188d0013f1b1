"""UAR end to end on phantoms: the dVAE recipe, then two-stage UAR on its tokens; config errors."""

from __future__ import annotations

import json

import pytest

from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.errors import ConfigError
from cxrfm.models.report import UARGenerator, load_report_generator
from cxrfm.pipelines.report_generation import ReportGenerationPipeline
from cxrfm.recipes.dvae import DVAETrainConfig, run_dvae_training
from cxrfm.recipes.report import ReportTrainConfig, run_report_training

TINY_DVAE = ["train.max_steps=30", "train.validate_every=15", "train.warmup_steps=2", "eval_max_images=8",
             "data=[{kind: phantom, num_samples: {train: 48, val: 8, test: 8}, cache: true}]", "train.progress_bar=false"]
TWO_STAGES = ("stages=[{max_steps: 8, ce: 1.0, alignment: 1.0, mask: 0.0, refine: false}, "
              "{max_steps: 8, ce: 1.0, alignment: 1.0, mask: 1.0, refine: true}]")


@pytest.fixture(scope="module")
def dvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dvae")
    untrained = load_config(DVAETrainConfig, resolve_config_path("dvae-tiny-phantom"), [*TINY_DVAE, f"train.output_dir={out / 'untrained'}", "train.max_steps=1", "train.warmup_steps=0", "train.validate_every=0"])
    config = load_config(DVAETrainConfig, resolve_config_path("dvae-tiny-phantom"), [*TINY_DVAE, f"train.output_dir={out / 'trained'}"])
    return run_dvae_training(untrained), run_dvae_training(config), out / "trained"


def test_dvae_recipe_writes_model_metrics_and_figure_and_training_helps(dvae_run):
    untrained, trained, folder = dvae_run
    assert (folder / "model" / "model.safetensors").is_file() and (folder / "reconstructions.png").is_file()
    assert json.loads((folder / "metrics_test.json").read_text()) == trained
    assert trained["per_dataset"]["phantom"]["psnr_mean"] > untrained["per_dataset"]["phantom"]["psnr_mean"] + 2  # 30 steps: about +2.7 dB
    assert trained["codebook"]["used_codes"] + trained["codebook"]["dead_codes"] == trained["codebook_size"]


def uar_config(tmp_path, dvae_folder, *extra):
    overrides = [
        f"train.output_dir={tmp_path / 'uar'}", f"model.uar.dvae_dir={dvae_folder / 'model'}", TWO_STAGES,
        "data.num_samples={train: 32, val: 8, test: 8}", "train.validate_every=4", "train.warmup_steps=2",
        "evaluation.meteor=false", "train.progress_bar=false", "train.batch_size=8", *extra,
    ]
    return load_config(ReportTrainConfig, resolve_config_path("uar-tiny-phantom"), overrides)


def test_two_stage_uar_trains_both_stages_and_scores_alignment(dvae_run, tmp_path):
    run = run_report_training(uar_config(tmp_path, dvae_run[2]))
    assert (tmp_path / "uar" / "stage1" / "model" / "model.safetensors").is_file()
    history = [json.loads(line) for line in (tmp_path / "uar" / "metrics.jsonl").read_text().splitlines() if '"mask"' in line]
    assert history and all("global" in row for row in history)  # stage 2 logged both auxiliary losses
    stage1 = [json.loads(line) for line in (tmp_path / "uar" / "stage1" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert stage1 and all("mask" not in row for row in stage1)  # stage 1: λ_Mask = 0
    model = load_report_generator(run.model_dir)
    assert isinstance(model, UARGenerator) and model.config.visual == "tokens" and model.refine
    assert 0.0 <= run.test_scores["alignment_score"] <= 1.0
    assert "swapped_gap" in run.test_scores["teacher_forced"]
    pipeline = ReportGenerationPipeline.from_pretrained(run.model_dir, device="cpu")
    assert pipeline.image_size == (112, 112)
    import torch

    assert len(pipeline(torch.rand(2, 1, 112, 112), beam_size=2, max_length=6)) == 2


def test_chinese_uar_and_the_vit_feature_base_row(dvae_run, tmp_path):
    zh = run_report_training(uar_config(tmp_path / "zh", dvae_run[2], "tokenizer.language=zh"))
    assert zh.test_scores["nlg"]["BLEU-4"] >= 0 and load_report_generator(zh.model_dir).tokenizer.config.language == "zh"
    base = run_report_training(uar_config(
        tmp_path / "base", dvae_run[2], "model.uar.lsu=false", "model.uar.cra=false", "model.uar.tir=false",
        "model.image_size=[64, 64]", "model.uar.train_image_size=[72, 72]",
        "stages=[{max_steps: 8, ce: 1.0, alignment: 0.0, mask: 0.0, refine: false}]",
    ))
    model = load_report_generator(base.model_dir)
    assert model.config.visual == "features" and model.aligner is None and model.refiner_mask is None


@pytest.mark.parametrize("overrides, field", [
    (["model.uar.tir=false"], "stages[1]"),  # stage 2 refines without a mask
    (["stages=[{max_steps: 5, refine: false}]"], "stages[0].refine"),  # saved with TIR on, trained without
    (["model.uar.dvae_dir=null"], "model.uar.dvae_dir"),
    (["model.architecture=r2gen", "model.preset=r2gen-tiny-cpu"], "stages"),
])
def test_inconsistent_uar_settings_name_the_field(tmp_path, overrides, field):
    with pytest.raises(ConfigError) as error:
        config = uar_config(tmp_path, tmp_path / "missing", *overrides)
        run_report_training(config)
    assert error.value.field.startswith(field)
