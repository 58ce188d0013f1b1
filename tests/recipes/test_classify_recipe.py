"""The classification run on phantoms: loss goes down, selection and thresholds come from
validation, outputs are written; the classify verb trains, predicts and evaluates."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import torch

from cxrfm.config import from_dict
from cxrfm.evaluation.classification import best_f1_thresholds
from cxrfm.models.classify import load_classifier
from cxrfm.recipes.classify import ClassifyConfig, build_classification_data, run_classification
from cxrfm.pipelines.classification import load_thresholds, predict_dataset

LABELS = ["Cardiomegaly", "Pleural Effusion", "No Finding"]


def tiny_config(output_dir, **train) -> ClassifyConfig:
    return from_dict(ClassifyConfig, {
        "model": {"kind": "vtb", "encoder_preset": "vit-tiny-cpu", "encoder_overrides": {"depth": 2},
                  "label_embedding": "learned", "logit_batchnorm": True, "image_size": [64, 64]},
        "labels": {"names": LABELS},
        "data": {"kind": "phantom", "cache": True, "num_samples": {"train": 64, "val": 32, "test": 24},
                 "options": {"finding_probs": {"Cardiomegaly": 0.4, "Pleural Effusion": 0.4}}},
        "evaluation": {"bootstrap": 100, "heatmap_images": 2, "batch_size": 32},
        "train": {"output_dir": str(output_dir), "max_steps": 40, "batch_size": 16, "lr": 2e-3, "warmup_steps": 4,
                  "log_every": 5, "validate_every": 10, "save_checkpoints": False, "tensorboard": False,
                  "progress_bar": False, "device": "cpu", "num_threads": 1, **train},
    })


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("classify") / "run"
    config = tiny_config(run_dir)
    return config, run_classification(config)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_its_outputs(phantom_run):
    config, result = phantom_run
    run_dir = result.output_dir
    losses = [r["loss"] for r in _records(run_dir) if "loss" in r]
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2])
    for name in ("metrics.json", "metrics.md", "figures/heatmaps.png", "model/config.json", "model/model.safetensors", "model/thresholds.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["label_names"] == LABELS and metrics["test"]["num_images"] == 24
    mean = metrics["test"]["mean"]["auroc"]
    assert mean["ci"][0] <= mean["value"] <= mean["ci"][1]
    assert "## Test (24 images; validation thresholds)" in (run_dir / "metrics.md").read_text()


def test_weights_and_thresholds_are_selected_on_validation(phantom_run):
    config, result = phantom_run
    validations = [r for r in _records(result.output_dir) if "val/mean_auroc" in r]
    assert [r["step"] for r in validations] == [10, 20, 30, 40]
    best = max(validations, key=lambda r: r["val/mean_auroc"])  # first maximum wins ties
    assert result.best_step == best["step"]
    model = load_classifier(result.model_dir)
    data = build_classification_data(config.data, config.labels, (64, 64))
    probabilities, labels = predict_dataset(model, data.val)
    from cxrfm.evaluation.classification import auroc_per_label

    assert np.nanmean(auroc_per_label(probabilities, labels)) == pytest.approx(best["val/mean_auroc"], abs=1e-6)
    saved = load_thresholds(result.model_dir, model.label_names)
    np.testing.assert_allclose(saved, best_f1_thresholds(probabilities, labels))
    np.testing.assert_allclose(result.thresholds, saved)


def test_a_small_label_fraction_trains_on_a_nested_stratified_subset(tmp_path):
    config = tiny_config(tmp_path / "one-percent", max_steps=2, validate_every=1)
    config.labels.fraction = 0.05  # 3 of 64 images, plus a positive for each label lacking one
    full_config = tiny_config(tmp_path / "x")
    full = build_classification_data(full_config.data, full_config.labels, (64, 64))
    small = build_classification_data(config.data, config.labels, (64, 64))
    assert set(small.subset_indices) <= set(full.subset_indices) and len(full.subset_indices) == 64
    assert 3 <= len(small.train) <= 3 + len(LABELS)
    subset_labels = np.stack([small.train[i].labels.numpy() for i in range(len(small.train))])
    assert (subset_labels == 1).any(axis=0).all()
    np.testing.assert_allclose(small.positive_ratio.numpy(), subset_labels.mean(axis=0), rtol=1e-6)
    result = run_classification(config)  # batch 16 > subset size: every step uses the whole subset
    assert result.train_images == len(small.train) and result.steps == 2


def _cli(*argv: str) -> int:
    from cxrfm.cli import classify

    parser = argparse.ArgumentParser()
    classify.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["classify", *argv])
    return args.func(args)


def test_cli_predicts_a_folder_and_evaluates_with_the_saved_thresholds(phantom_run, tmp_path, capsys):
    from cxrfm.data.phantom import PhantomDataset
    from cxrfm.io import write_image

    _, result = phantom_run
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        write_image(folder / f"case{index}.png", PhantomDataset(3, (80, 72), seed=50)[index].image[0].numpy())
    out = tmp_path / "probs.csv"
    assert _cli("predict", "--model", str(result.model_dir), "--input", str(folder), "--out", str(out)) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and set(LABELS) <= set(rows[0])
    assert all(0 <= float(row[name]) <= 1 for row in rows for name in LABELS)
    metrics = tmp_path / "eval.json"
    code = _cli("evaluate", "--model", str(result.model_dir), "--dataset", "phantom", "--split", "test",
                "--num-samples", "24", "--bootstrap", "100", "--out", str(metrics))
    assert code == 0
    assert "| **mean** | 24 images |" in capsys.readouterr().out
    scored = json.loads(metrics.read_text())
    # The same 24 test phantoms and thresholds as the training run's own test table.
    assert scored["mean"]["auroc"]["value"] == pytest.approx(result.test_metrics["mean"]["auroc"]["value"])
    assert [scored["labels"][n]["threshold"] for n in LABELS] == pytest.approx(result.thresholds)


def test_cli_train_runs_a_shipped_config_with_overrides(tmp_path):
    run_dir = tmp_path / "cli-run"
    code = _cli("train", "--config", "classify-tiny-phantom", "--set", f"train.output_dir={run_dir}",
                "--set", "train.max_steps=2", "--set", "train.validate_every=1", "--set", "model.label_embedding=learned",
                "--set", "data.num_samples={train: 16, val: 8, test: 8}", "--set", "model.image_size=[64, 64]",
                "--set", "evaluation.bootstrap=10", "--set", "evaluation.heatmap_images=0", "--set", "train.progress_bar=false")
    assert code == 0 and (run_dir / "model" / "thresholds.json").is_file()


@pytest.mark.realdata
def test_evaluate_on_the_covid_test_split_uses_the_saved_dataset_options(shared_data_dir, tmp_path, capsys):
    from cxrfm.models.classify import ClassifierConfig, build_classifier
    from cxrfm.models.vit import vit_config
    from cxrfm.pipelines.classification import save_classifier

    torch.manual_seed(0)
    labels = ("COVID-19", "Other Pneumonia", "No Finding")
    config = ClassifierConfig(kind="linear_probe", label_names=labels, encoder=vit_config("vit-tiny-cpu", image_size=(64, 64)))
    model_dir = save_classifier(build_classifier(config), tmp_path / "model", np.full(3, 0.5),
                                extra={"dataset": {"kind": "covid", "options": {"label_set": "coarse", "mask_source": None}}})
    root = shared_data_dir / "covid_chestxray"
    assert _cli("evaluate", "--model", str(model_dir), "--dataset", "covid", "--root", str(root), "--bootstrap", "50") == 0
    table = capsys.readouterr().out
    # README: the test split holds 53 COVID-19, 11 other pneumonia and 3 normal images.
    assert "| COVID-19 | 53 / 67 |" in table and "| Other Pneumonia | 11 / 67 |" in table and "| No Finding | 3 / 67 |" in table


def test_cached_trunk_tokens_train_exactly_like_images(tmp_path):
    from safetensors.torch import load_file

    weights = {}
    for cached in (True, False):
        config = tiny_config(tmp_path / f"cached-{cached}", max_steps=4, validate_every=2)
        config.model.kind = "linear_probe"
        config.model.precompute_trunk = cached
        config.evaluation.heatmap_images = 0
        store: dict = {}
        result = run_classification(config, token_store=store)
        assert len(store) == (3 if cached else 0)  # train, val, test splits cached once each
        weights[cached] = load_file(str(result.model_dir / "model.safetensors"))
    for name, tensor in weights[True].items():
        torch.testing.assert_close(tensor, weights[False][name], rtol=1e-4, atol=1e-5)


def test_demo_stage_trains_on_phantoms_and_reports_its_table_and_heatmaps(tmp_path):
    from cxrfm.recipes.demo import run_classify_demo

    shrink = ["train.max_steps=3", "train.validate_every=3", "model.label_embedding=learned", "model.image_size=[64, 64]",
              "data.num_samples={train: 16, val: 12, test: 12}", "evaluation.bootstrap=20", "evaluation.heatmap_images=2"]
    summary = run_classify_demo(tmp_path / "classify", None, seed=1, overrides=shrink)
    assert summary["encoder"] == "random init" and summary["steps"] == 3
    assert summary["labels"] == ["Cardiomegaly", "Pleural Effusion", "Lung Opacity", "Pneumothorax", "Nodule", "No Finding"]
    assert (tmp_path / "classify" / "figures" / "heatmaps.png").is_file()
    assert "## Test (12 images" in summary["table_markdown"]
    assert set(summary["test_auroc"]) == set(summary["labels"])
