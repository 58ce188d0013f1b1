"""``cxrfm report generate`` / ``evaluate`` round trip on a tiny folder and manifest; ``train`` from the CLI."""

from __future__ import annotations

import csv
import json

import pytest

from cxrfm.cli.report import main
from cxrfm.data.phantom import PhantomDataset
from cxrfm.io import write_image


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory):
    """``images/*.png`` of 3 phantoms and a ``manifest.jsonl`` (two views each) with their findings."""
    root = tmp_path_factory.mktemp("phantom_folder")
    (root / "images").mkdir()
    dataset = PhantomDataset(3, (48, 48), seed=7_000_000, split="test")
    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        path = root / "images" / f"case{index}.png"
        write_image(path, sample.image[0].numpy())
        rows.append({"image": [f"images/case{index}.png"] * 2, "study_id": f"case{index}", "findings": sample.findings})
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return root, rows


def test_generate_on_a_folder_then_evaluate_against_a_csv(trained_report_run, phantom_folder, tmp_path, capsys):
    root, rows = phantom_folder
    predictions = tmp_path / "preds.csv"
    assert main(["generate", "--model", str(trained_report_run.model_dir), "--input", str(root / "images"), "--out", str(predictions), "--beam", "1"]) == 0
    with open(predictions, newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert [row["id"] for row in written] == ["case0", "case1", "case2"]
    assert all(row["prediction"] and row["image"].endswith(".png") for row in written)
    assert "reference" not in written[0]  # a bare folder has no reports

    references = tmp_path / "refs.csv"
    with open(references, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "report"])
        writer.writeheader()
        writer.writerows({"id": row["study_id"], "report": row["findings"]} for row in rows)
    metrics = tmp_path / "metrics.json"
    arguments = ["evaluate", "--predictions", str(predictions), "--references", str(references), "--no-meteor", "--out", str(metrics)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    scores = json.loads(metrics.read_text())
    assert scores["num_reports"] == 3 and 0.0 <= scores["nlg"]["BLEU-4"] <= 1.0
    assert "BLEU-4" in printed and "CE f1_micro" in printed and "rule labeler" in printed
    assert scores["references"]["convention"].startswith("normalised")


def test_generate_on_a_manifest_keeps_references_and_scores_itself(trained_report_run, phantom_folder, tmp_path):
    root, rows = phantom_folder
    predictions = tmp_path / "preds.jsonl"
    assert main(["generate", "--model", str(trained_report_run.model_dir), "--input", str(root), "--out", str(predictions)]) == 0
    written = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["id"] for row in written] == ["case0", "case1", "case2"]
    assert all(row["reference"] for row in written)
    metrics = tmp_path / "metrics.json"
    model = str(trained_report_run.model_dir)
    assert main(["evaluate", "--predictions", str(predictions), "--tokenizer", model, "--no-meteor", "--no-clinical", "--out", str(metrics)]) == 0
    scores = json.loads(metrics.read_text())
    assert "R2Gen" in scores["references"]["convention"] and "clinical" not in scores


def test_evaluate_names_missing_references(tmp_path, capsys):
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text(json.dumps({"id": "nowhere", "prediction": "no effusion ."}) + "\n")
    references = tmp_path / "refs.jsonl"
    references.write_text(json.dumps({"id": "elsewhere", "reference": "no effusion ."}) + "\n")
    assert main(["evaluate", "--predictions", str(predictions), "--references", str(references), "--no-meteor"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_train_from_the_cli(tmp_path):
    config = tmp_path / "tiny.yaml"
    from report_configs import tiny_report_config

    from cxrfm.config import save_config

    save_config(tiny_report_config(tmp_path / "run", train={"max_steps": 3, "validate_every": 0}, evaluation={"test": False}), config)
    assert main(["train", "--config", str(config), "--set", "train.select_metric=loss", "--set", "train.select_mode=min"]) == 0
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["metric"] == "loss"
