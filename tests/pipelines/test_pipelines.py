"""Inference pipelines: ``from_pretrained(folder)`` + ``__call__`` give what the models and the
recipes' own loops give, on the same inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrfm.anatomy.segmenter import PRESETS, LungSegmenter
from cxrfm.errors import ConfigError
from cxrfm.models.classify import ClassifierConfig, build_classifier
from cxrfm.models.vit import vit_config
from cxrfm.pipelines.classification import ClassificationPipeline, load_thresholds, save_classifier
from cxrfm.pipelines.lung_masks import LungMaskPipeline, predict_folder
from cxrfm.pipelines.report_generation import ReportGenerationPipeline

LABELS = ("Cardiomegaly", "Pleural Effusion")


def test_lung_masks_equal_the_segmenters_own_masks(tmp_path):
    torch.manual_seed(0)
    segmenter = LungSegmenter(PRESETS["tiny"]).eval()
    segmenter.save_pretrained(tmp_path / "segmenter")
    images = torch.rand(3, 1, 64, 64)
    pipeline = LungMaskPipeline.from_pretrained(tmp_path / "segmenter", device="cpu")
    masks = pipeline(images, keep_largest=0)
    with torch.no_grad():
        expected = segmenter.predict_mask(images, keep_largest=0)
    assert masks.shape == (3, 1, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, expected)
    assert pipeline(images[0], keep_largest=0).shape == (1, 64, 64)  # one image in, one mask out


def test_predict_folder_writes_one_mask_per_image(tmp_path, write_gray, make_ramp):
    torch.manual_seed(0)
    LungSegmenter(PRESETS["tiny"]).save_pretrained(tmp_path / "segmenter")
    for name in ("a.png", "sub/b.png"):
        write_gray(tmp_path / "images" / name, make_ramp(48, 40))
    count = predict_folder(tmp_path / "segmenter", tmp_path / "images", tmp_path / "masks", overlays=True, progress=False)
    assert count == 2
    assert (tmp_path / "masks" / "a.png").is_file() and (tmp_path / "masks" / "sub" / "b.png").is_file()
    assert (tmp_path / "masks" / "overlays" / "a.png").is_file()


def _tiny_classifier():
    torch.manual_seed(0)
    encoder = vit_config("vit-tiny-cpu", image_size=(32, 32), patch_size=(8, 8), embed_dim=32, depth=2, num_heads=2)
    config = ClassifierConfig(kind="vtb", label_names=LABELS, encoder=encoder, label_embedding="learned", label_embedding_dim=16)
    return build_classifier(config).eval()


def test_classification_probabilities_decisions_and_heatmaps(tmp_path):
    model = _tiny_classifier()
    thresholds = np.array([0.4, 0.6])
    save_classifier(model, tmp_path / "model", thresholds, extra={"dataset": {"kind": "phantom", "options": {}}})
    pipeline = ClassificationPipeline.from_pretrained(tmp_path / "model", device="cpu")
    images = torch.rand(4, 1, 32, 32)
    output = pipeline(images)
    with torch.no_grad():
        expected = torch.sigmoid(model(images)).numpy()
    np.testing.assert_allclose(output.probabilities, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(output.positives, output.probabilities >= thresholds)
    assert output.label_names == LABELS and pipeline.image_size == (32, 32)
    heatmaps, probabilities = pipeline.heatmaps(images)
    assert heatmaps.shape == (4, 2, 32, 32) and float(heatmaps.min()) >= 0 and float(heatmaps.max()) <= 1
    np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_thresholds_for_other_labels_are_refused(tmp_path):
    save_classifier(_tiny_classifier(), tmp_path / "model", np.array([0.5, 0.5]))
    with pytest.raises(ConfigError, match="thresholds are for"):
        load_thresholds(tmp_path / "model", ("Nodule", "Pneumothorax"))
    record = json.loads((tmp_path / "model" / "thresholds.json").read_text())
    assert record["selected_on"].startswith("validation")


def test_report_pipeline_reproduces_the_recipes_test_predictions(trained_report_run):
    from report_configs import tiny_report_config

    from cxrfm.recipes.report import build_report_split

    pipeline = ReportGenerationPipeline.from_pretrained(trained_report_run.model_dir, device="cpu")
    rows = [json.loads(line) for line in trained_report_run.predictions_path.read_text().splitlines()]
    config = tiny_report_config(trained_report_run.output_dir)
    test = build_report_split(config.data, "test", pipeline.image_size, 1, config.text, "en")
    images = torch.stack([test[i].image for i in range(len(test))])  # (B, 1, H, W): one view each
    assert pipeline(images) == [row["prediction"] for row in rows]
    assert pipeline(images[:2], beam_size=1) == pipeline(images[:2, None], beam_size=1)
