"""Report generation on the one training loop: phantom runs, model selection on val only, outputs."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.data.phantom import PhantomDataset
from cxrfm.models.report.tokenizer import ReportTokenizer
from cxrfm.errors import ConfigError
from cxrfm.models.report import ReportGenerator
from cxrfm.recipes.report import ReportTrainConfig, run_report_training

from report_configs import tiny_report_config


def test_phantom_run_lowers_the_loss_and_writes_a_loadable_model(trained_report_run):
    run = trained_report_run
    losses = [record["loss"] for record in run.train.history]
    assert losses[-1] < 0.6 * losses[0]
    model = ReportGenerator.from_pretrained(run.model_dir)
    assert model.tokenizer is not None and len(model.tokenizer) == run.vocab_size
    # The tokenizer saved at the run root is the one inside the model folder (train split only).
    assert ReportTokenizer.from_pretrained(run.output_dir).vocabulary == model.tokenizer.vocabulary
    settings = json.loads((run.model_dir / "generation.json").read_text())
    assert settings["views_per_study"] == 1 and settings["decoding"]["beam_size"] == 2
    # Two learning rates: the ViT's group at encoder_lr, the rest at train.lr (checked in the saved state).
    assert {"encoder", "decoder"} <= {name.split("_")[0] for name in _group_names(run)}
    # The model folder holds the best validation weights.
    best = json.loads((run.output_dir / "best" / "best.json").read_text())
    assert best["metric"] == "BLEU-4" and run.train.best["step"] == best["step"]
    assert (run.model_dir / "model.safetensors").read_bytes() == (run.output_dir / "best" / "model.safetensors").read_bytes()


def _group_names(run) -> list[str]:
    from cxrfm.training.checkpoint import latest_checkpoint, load_train_state

    state = load_train_state(latest_checkpoint(run.output_dir / "checkpoints"))
    return [group["name"] for group in state["optimizer"]["param_groups"]]


def test_test_split_is_scored_after_training(trained_report_run):
    run = trained_report_run
    rows = [json.loads(line) for line in run.predictions_path.read_text().splitlines()]
    assert len(rows) == run.split_sizes["test"] == 4
    assert all(row["prediction"] and row["reference"] for row in rows)
    scores = json.loads((run.output_dir / "metrics_test.json").read_text())
    assert set(scores["nlg"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert 0.0 < scores["nlg"]["BLEU-1"] <= 1.0
    assert "rule labeler" in scores["clinical_convention"] and 0.0 <= scores["clinical"]["f1_micro"] <= 1.0
    assert scores["teacher_forced"]["perplexity"] == pytest.approx(torch.tensor(scores["teacher_forced"]["loss"]).exp().item())
    forced = scores["teacher_forced"]
    assert forced["swapped_gap"] == pytest.approx(forced["loss_swapped_images"] / forced["loss"] - 1)
    assert scores["distinct_reports"] == len({row["prediction"] for row in rows})
    # Phantom studies carry their true findings: the generated reports are scored against them.
    findings = scores["findings"]
    assert set(findings["per_finding"]) == {"Cardiomegaly", "Pleural Effusion", "Lung Opacity", "Pneumothorax", "Nodule"}
    assert all(0.0 <= entry["f1"] <= 1.0 for entry in findings["per_finding"].values())
    assert "labeler" in findings["convention"]


class _Untouchable(Dataset):
    """A test split that fails the run if anything reads it."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise AssertionError("the test split was read")


def test_model_selection_reads_validation_only(tmp_path):
    config = tiny_report_config(tmp_path / "run", evaluation={"test": False}, train={"max_steps": 20, "validate_every": 5})
    run = run_report_training(config, splits={"test": _Untouchable()})
    validations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [(record["val/BLEU-4"], -record["step"]) for record in validations if "val/BLEU-4" in record]
    assert len(scored) == 4
    best_value, negative_step = max(scored)  # the earliest of equal scores is kept
    assert run.train.best["step"] == -negative_step and run.train.best["value"] == pytest.approx(best_value)
    assert run.test_scores is None and "test" not in run.split_sizes


def test_test_split_is_built_only_once_the_model_is_selected(tmp_path):
    output = tmp_path / "run"

    def build_test_split():
        assert (output / "model" / "model.safetensors").is_file(), "test split requested before training ended"
        return PhantomDataset(3, (32, 32), seed=5_000_000, split="test")

    run = run_report_training(tiny_report_config(output, train={"max_steps": 4, "validate_every": 0}), splits={"test": build_test_split})
    assert run.split_sizes["test"] == 3


def test_chinese_reports_and_an_image_blind_model(tmp_path):
    zh = run_report_training(tiny_report_config(tmp_path / "zh", tokenizer={"language": "zh"}, train={"max_steps": 6}))
    vocabulary = ReportTokenizer.from_pretrained(zh.model_dir).vocabulary
    assert "肺" in vocabulary and "。" in vocabulary
    rows = [json.loads(line) for line in zh.predictions_path.read_text().splitlines()]
    assert all("，" not in row["reference"] for row in rows) and "clinical" not in zh.test_scores

    blank = run_report_training(
        tiny_report_config(tmp_path / "blank", model={"visual": "blank", "overrides": {"feature_dim": 8}}, train={"max_steps": 6})
    )
    predictions = {json.loads(line)["prediction"] for line in blank.predictions_path.read_text().splitlines()}
    assert len(predictions) == 1  # no image input: one report for every study
    assert ReportGenerator.from_pretrained(blank.model_dir).encoder is None


def test_shipped_configs_load_and_name_the_protocol():
    tiny = load_config(ReportTrainConfig, resolve_config_path("report-tiny-phantom"))
    assert tiny.data.kind == "phantom" and tiny.train.select_metric == "BLEU-4"
    iu = load_config(ReportTrainConfig, resolve_config_path("report-iu-xray"))
    assert (iu.model.views_per_study, iu.tokenizer.min_frequency, iu.tokenizer.max_length, iu.decoding.beam_size) == (2, 3, 60, 3)
    assert (iu.encoder_lr, iu.train.lr, iu.train.optimizer, iu.train.amsgrad, iu.train.weight_decay) == (5e-5, 1e-4, "adam", True, 5e-5)
    with pytest.raises(ConfigError, match="visual"):
        load_config(ReportTrainConfig, resolve_config_path("report-tiny-phantom"), ["model.visual=pixels"])
