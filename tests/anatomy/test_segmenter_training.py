"""Training the segmenter: augmentation, loss, schedule, config, and a short run whose loss falls."""

import json
import math

import pytest
import torch

from cxrfm.anatomy.segmenter import LungSegmenter, LungSegmenterConfig
from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.training.segmentation import (
    AugmentConfig,
    SegmenterTrainConfig,
    augment_batch,
    dice_bce_loss,
    random_affine,
    stack_letterboxed,
    train_segmenter,
    warmup_cosine,
)


def _ellipse_pairs(count: int, size=(64, 64), seed: int = 0):
    """Two dark ellipses ("lungs") in a bright disc, with exact masks; random positions and sizes."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = torch.meshgrid(torch.arange(size[0]) / size[0], torch.arange(size[1]) / size[1], indexing="ij")
    pairs = []
    for _ in range(count):
        jitter = 0.05 * (torch.rand(4, generator=generator) - 0.5)
        body = ((columns - 0.5) / 0.45) ** 2 + ((rows - 0.5) / 0.48) ** 2 < 1
        lungs = torch.zeros(size, dtype=torch.bool)
        for centre_x in (0.3 + jitter[0], 0.7 + jitter[1]):
            lungs |= ((columns - centre_x) / (0.12 + jitter[2])) ** 2 + ((rows - 0.5) / (0.3 + jitter[3])) ** 2 < 1
        image = torch.where(body, 0.75, 0.05) - 0.4 * lungs + 0.03 * torch.randn(size, generator=generator)
        pairs.append((image.clamp(0, 1)[None].float(), lungs[None].float()))
    return pairs


def test_affine_moves_image_and_mask_together():
    pairs = _ellipse_pairs(4)
    images, masks, valid = stack_letterboxed(pairs, (64, 64))
    generator = torch.Generator().manual_seed(1)
    no_intensity = AugmentConfig(gamma_log_range=0, contrast_range=0, brightness_range=0)
    augmented_images, augmented_masks = augment_batch(images, masks, valid, no_intensity, generator)
    assert augmented_masks.shape == masks.shape and set(augmented_masks.unique().tolist()) <= {0.0, 1.0}
    # The lungs are the dark pixels inside the bright body: they must still sit under the warped mask.
    dark_inside = (augmented_images < 0.55) & (augmented_images > 0.2)
    agreement = (dark_inside == augmented_masks.bool()).float().mean()
    assert agreement > 0.95
    assert not torch.equal(augmented_masks, masks)  # something actually moved


def test_identity_affine_changes_nothing_and_never_flips():
    stack = torch.rand(2, 2, 32, 32)
    identity = AugmentConfig(scale=(1.0, 1.0), rotation_degrees=0.0, shift_fraction=0.0)
    out = random_affine(stack, identity, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, stack, atol=1e-5, rtol=0)


def test_augmentation_is_reproducible_from_the_generator():
    images, masks, valid = stack_letterboxed(_ellipse_pairs(3), (64, 64))
    first = augment_batch(images, masks, valid, AugmentConfig(), torch.Generator().manual_seed(7))
    second = augment_batch(images, masks, valid, AugmentConfig(), torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_dice_bce_loss_prefers_the_right_answer():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = dice_bce_loss((target - 0.5) * 20, target)
    bad = dice_bce_loss((0.5 - target) * 20, target)
    assert good < 0.01 < 1.5 < bad


def test_warmup_cosine_schedule():
    factor = warmup_cosine(100, 0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5, abs=0.02)
    assert factor(100) == pytest.approx(0.0)


def test_shipped_config_and_embedded_default_load():
    shipped = load_config(SegmenterTrainConfig, resolve_config_path("segmenter-openist"))
    assert shipped.data.kind == "openist"
    assert shipped.model.input_size[0] % 2**shipped.model.depth == 0
    default = load_config(SegmenterTrainConfig)
    assert default.data.kind == "phantom"
    assert default.model.input_size == (64, 64)
    overridden = load_config(SegmenterTrainConfig, None, ["model.input_size=[32, 48]", "train.epochs=2"])
    assert overridden.model.input_size == (32, 48) and overridden.train.epochs == 2


def test_short_training_run_reduces_the_loss_and_saves_the_best_weights(tmp_path):
    config = SegmenterTrainConfig(model=LungSegmenterConfig(input_size=(64, 64), base_width=8, depth=3))
    config.train.epochs = 6
    config.train.batch_size = 8
    config.train.lr = 5e-3
    config.train.progress = False
    run_dir = train_segmenter(config, tmp_path / "run", _ellipse_pairs(16), _ellipse_pairs(4, seed=1))
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(records) == 6
    assert records[-1]["train_loss"] < 0.7 * records[0]["train_loss"]
    best = max(record["val_dice"] for record in records)
    assert best > 0.5
    # The saved weights are the best epoch's: re-scoring them reproduces the best val Dice.
    model = LungSegmenter.from_pretrained(run_dir)
    from cxrfm.training.segmentation import validation_dice

    assert validation_dice(model, _ellipse_pairs(4, seed=1)) == pytest.approx(best, abs=1e-6)
    assert (run_dir / "train_config.yaml").is_file()
    assert not math.isnan(records[-1]["lr"])
