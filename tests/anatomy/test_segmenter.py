"""LungSegmenter: shapes, save/load, and that predict maps back onto the input grid exactly."""

import json

import numpy as np
import pytest
import torch

from cxrfm.anatomy.segmenter import (
    PRESETS,
    LungSegmenter,
    LungSegmenterConfig,
    letterbox,
    letterbox_geometry,
    unletterbox,
)
from cxrfm.errors import CheckpointError

TINY = LungSegmenterConfig(input_size=(32, 48), base_width=4, depth=3)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_forward_backward_on_non_square_input(preset):
    config = PRESETS[preset]
    model = LungSegmenter(config)
    stride = 2**config.depth
    images = torch.rand(2, 1, 3 * stride, 5 * stride, requires_grad=True)
    logits = model(images)
    assert logits.shape == (2, 1, 3 * stride, 5 * stride)
    logits.mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_config_rejects_sizes_not_divisible_by_the_stride():
    with pytest.raises(ValueError, match="divisible"):
        LungSegmenterConfig(input_size=(100, 100), depth=4)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = LungSegmenter(TINY)
    # Make BatchNorm running statistics non-trivial so loading them is actually tested.
    model.train()
    model(torch.rand(4, 1, 32, 48))
    model.eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["input_size"] == [32, 48]
    loaded = LungSegmenter.from_pretrained(tmp_path)
    images = torch.rand(2, 1, 37, 61)
    torch.testing.assert_close(loaded.predict(images), model.predict(images), rtol=0, atol=0)
    assert loaded.config == model.config


def test_from_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="missing config.json"):
        LungSegmenter.from_pretrained(tmp_path)
    LungSegmenter(TINY).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["base_width"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        LungSegmenter.from_pretrained(tmp_path)


def test_letterbox_keeps_aspect_and_pads_evenly():
    box = letterbox_geometry((100, 200), (64, 64))
    assert (box.height, box.width) == (32, 64)
    assert (box.top, box.left) == (16, 0)
    boxed, same_box = letterbox(torch.ones(1, 1, 100, 200), (64, 64))
    assert same_box == box
    assert boxed[..., :16, :].abs().sum() == 0 and boxed[..., 48:, :].abs().sum() == 0
    assert torch.allclose(boxed[..., 16:48, :], torch.ones(1))
    restored = unletterbox(boxed, box, (100, 200))
    assert restored.shape == (1, 1, 100, 200)
    assert torch.allclose(restored, torch.ones(1))


def _identity_segmenter(config: LungSegmenterConfig) -> LungSegmenter:
    """A segmenter whose 'network' returns the image itself as logits (mask = image > 0.5)."""
    model = LungSegmenter(config)
    model.forward = lambda images: (images - 0.5) * 50
    return model


def _shape_mask(height: int, width: int) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ellipse = ((rows - 0.45 * height) / (0.3 * height)) ** 2 + ((columns - 0.3 * width) / (0.18 * width)) ** 2 < 1
    box = (rows > 0.2 * height) & (rows < 0.8 * height) & (columns > 0.6 * width) & (columns < 0.85 * width)
    return (ellipse | box).float()[None, None]


def test_predict_undoes_padding_exactly_at_integer_scale():
    # 40x80 into 80x80: scale exactly 2, padded 20 rows above and below.
    model = _identity_segmenter(LungSegmenterConfig(input_size=(80, 80), base_width=4, depth=2))
    mask = _shape_mask(40, 80)
    predicted = model.predict(mask)
    assert predicted.shape == mask.shape
    assert torch.equal((predicted > 0.5).float(), mask)


@pytest.mark.parametrize("size", [(37, 61), (90, 50), (64, 64)])
def test_predict_keeps_geometry_for_any_size(size):
    model = _identity_segmenter(LungSegmenterConfig(input_size=(64, 64), base_width=4, depth=2))
    mask = _shape_mask(*size)
    predicted = (model.predict(mask) > 0.5).float()
    assert predicted.shape == mask.shape
    # Resampling can move a boundary by one pixel, but never shift or rescale the shape.
    intersection = (predicted * mask).sum()
    assert 2 * intersection / (predicted.sum() + mask.sum()) > 0.95
    centre = lambda m: torch.nonzero(m[0, 0]).float().mean(0)  # noqa: E731
    assert torch.allclose(centre(predicted), centre(mask), atol=0.5)


def test_predict_mask_keeps_two_largest_components_and_fills_holes():
    model = _identity_segmenter(LungSegmenterConfig(input_size=(64, 64), base_width=4, depth=2))
    image = torch.zeros(1, 1, 64, 64)
    image[..., 5:40, 5:25] = 1  # left lung
    image[..., 5:40, 35:60] = 1  # right lung
    image[..., 50:54, 28:32] = 1  # small speck: dropped
    image[..., 15:20, 10:15] = 0  # hole: filled
    mask = model.predict_mask(image)
    expected = torch.zeros(1, 1, 64, 64)
    expected[..., 5:40, 5:25] = 1
    expected[..., 5:40, 35:60] = 1
    assert mask.dtype == torch.float32
    assert torch.equal(mask, expected)
    # keep_largest=0 keeps every component.
    assert model.predict_mask(image, keep_largest=0)[..., 50:54, 28:32].sum() == 16


def test_predict_rejects_wrong_shapes():
    model = LungSegmenter(TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.predict(torch.rand(1, 32, 48))


def test_predict_returns_probabilities_and_restores_training_mode():
    model = LungSegmenter(TINY).train()
    probabilities = model.predict(torch.rand(3, 1, 50, 70))
    assert probabilities.shape == (3, 1, 50, 70)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    assert model.training
    assert np.isfinite(probabilities.numpy()).all()
