"""The IU-Xray path end to end on the real reports and R2Gen split, with stand-in images.

The shared set has no IU images, so the first studies of each split get stand-in PNGs (phantoms) in
the R2Gen layout ``images/<id>/0.png, 1.png`` under tmp; the run reads two views per study.
"""

from __future__ import annotations

import json

import pytest

from cxrfm.cli.report import main
from cxrfm.data.phantom import PhantomDataset
from cxrfm.io import write_image
from cxrfm.recipes.report import build_report_split, run_report_training

from report_configs import tiny_report_config

STUDIES = {"train": 8, "val": 3, "test": 3}


def _write_standins(annotation: dict, image_root) -> dict[str, list[str]]:
    phantoms = PhantomDataset(2 * sum(STUDIES.values()), (40, 40), seed=9_000_000)
    ids, drawn = {}, 0
    for split, count in STUDIES.items():
        ids[split] = [entry["id"] for entry in annotation[split][:count]]
        for study in ids[split]:
            (image_root / study).mkdir(parents=True)
            for view in range(2):
                write_image(image_root / study / f"{view}.png", phantoms[drawn].image[0].numpy())
                drawn += 1
    return ids


@pytest.mark.realdata
def test_iu_xray_train_generate_evaluate_with_standin_images(shared_data_dir, tmp_path, capsys):
    root = shared_data_dir / "iu_xray"
    ids = _write_standins(json.loads((root / "annotation.json").read_text()), tmp_path / "images")
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
