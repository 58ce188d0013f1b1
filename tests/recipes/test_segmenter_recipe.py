"""Training the segmenter: augmentation, loss, config, and short runs under the generic loop."""

import json
import math

import pytest
import torch

from cxrfm.anatomy.segmenter import LungSegmenter, LungSegmenterConfig
from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.data.sample import collate_samples
from cxrfm.errors import ConfigError
from cxrfm.training.checkpoint import latest_checkpoint
from cxrfm.training.augment import AUGMENT_UNIFORMS, AffineAugmentSection, augment_batch, random_affine
from cxrfm.training.tasks.segmentation import LetterboxedPairs, dice_bce_loss, valid_area, validation_dice
from cxrfm.recipes.segmenter import SegmenterOptimConfig, SegmenterTrainConfig, train_segmenter, trainer_config


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


def _letterboxed_batch(pairs, size=(64, 64)):
    """images, masks, valid ``(B, 1, *size)`` as the training step sees them."""
    dataset = LetterboxedPairs(pairs, size)
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    return batch.images, batch.lung_masks, valid_area([meta["box"] for meta in batch.meta], size)


def _uniforms(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, AUGMENT_UNIFORMS, generator=torch.Generator().manual_seed(seed))


def _records(run_dir, key):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if key in record]


def test_affine_moves_image_and_mask_together():
    images, masks, valid = _letterboxed_batch(_ellipse_pairs(4))
    no_intensity = AffineAugmentSection(gamma_log_range=0, contrast_range=0, brightness_range=0)
    augmented_images, augmented_masks = augment_batch(images, masks, valid, no_intensity, _uniforms(4, seed=1))
    assert augmented_masks.shape == masks.shape and set(augmented_masks.unique().tolist()) <= {0.0, 1.0}
    # The lungs are the dark pixels inside the bright body: they must still sit under the warped mask.
    dark_inside = (augmented_images < 0.55) & (augmented_images > 0.2)
    agreement = (dark_inside == augmented_masks.bool()).float().mean()
    assert agreement > 0.95
    assert not torch.equal(augmented_masks, masks)  # something actually moved


def test_identity_affine_changes_nothing_and_never_flips():
    stack = torch.rand(2, 2, 32, 32)
    identity = AffineAugmentSection(scale=(1.0, 1.0), rotation_degrees=0.0, shift_fraction=0.0)
    out = random_affine(stack, identity, _uniforms(2, seed=0))
    torch.testing.assert_close(out, stack, atol=1e-5, rtol=0)


def test_augmentation_is_a_function_of_the_uniforms():
    images, masks, valid = _letterboxed_batch(_ellipse_pairs(3))
    first = augment_batch(images, masks, valid, AffineAugmentSection(), _uniforms(3, seed=7))
    second = augment_batch(images, masks, valid, AffineAugmentSection(), _uniforms(3, seed=7))
    other = augment_batch(images, masks, valid, AffineAugmentSection(), _uniforms(3, seed=8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_intensity_changes_leave_the_letterbox_padding_black():
    # A 32x64 image letterboxed to 64x64 has 16 black rows above and below it.
    image = torch.full((1, 32, 64), 0.6)
    images, masks, valid = _letterboxed_batch([(image, torch.zeros_like(image))])
    assert valid[0, 0, :16].sum() == 0 and valid[0, 0, 16:48].all()
    fixed_geometry = AffineAugmentSection(scale=(1.0, 1.0), rotation_degrees=0.0, shift_fraction=0.0, brightness_range=0.3)
    augmented, _ = augment_batch(images, masks, valid, fixed_geometry, torch.full((1, AUGMENT_UNIFORMS), 0.99))
    assert augmented[0, 0, :16].abs().max() < 1e-4 and augmented[0, 0, 48:].abs().max() < 1e-4
    # Inside: gamma exp(0.98 * 0.35) darkens the flat 0.6, brightness adds 0.98 * 0.3 (contrast has no effect on a flat image).
    expected = 0.6 ** math.exp(0.98 * 0.35) + 0.98 * 0.3
    torch.testing.assert_close(augmented[0, 0, 20:44], torch.full((24, 64), expected), atol=1e-4, rtol=0)


def test_dice_bce_loss_prefers_the_right_answer():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = dice_bce_loss((target - 0.5) * 20, target)
    bad = dice_bce_loss((0.5 - target) * 20, target)
    assert good < 0.01 < 1.5 < bad


def test_epochs_become_loop_steps_with_per_epoch_logging_and_validation(tmp_path):
    optim = SegmenterOptimConfig(epochs=24, batch_size=8, warmup_fraction=0.05, checkpoint_every_epochs=4, lr=3e-3)
    loop = trainer_config(optim, steps_per_epoch=28, run_dir=tmp_path)
    assert (loop.max_steps, loop.warmup_steps) == (24 * 28, int(24 * 28 * 0.05))
    assert loop.validate_every == loop.log_every == 28 and loop.checkpoint_every == 4 * 28
    assert loop.peak_lr() == 3e-3 and loop.betas == (0.9, 0.999) and loop.output_dir == str(tmp_path)
    with pytest.raises(ValueError, match="epochs"):
        SegmenterOptimConfig(epochs=0)


def test_shipped_configs_and_embedded_default_load():
    import yaml

    from cxrfm.config import from_dict

    shipped = load_config(SegmenterTrainConfig, resolve_config_path("segmenter-openist"))
    assert shipped.data.kind == "openist"
    assert shipped.model.input_size[0] % 2**shipped.model.depth == 0
    default = load_config(SegmenterTrainConfig)
    assert default.data.kind == "phantom"
    assert default.model.input_size == (64, 64)
    overridden = load_config(SegmenterTrainConfig, None, ["model.input_size=[32, 48]", "train.epochs=2"])
    assert overridden.model.input_size == (32, 48) and overridden.train.epochs == 2
    demo = yaml.safe_load(resolve_config_path("demo").read_text())["segmenter"]
    demo_config = from_dict(SegmenterTrainConfig, demo)
    assert demo_config.data.count("train") == 96 and demo_config.data.count("val") == 24 and demo_config.train.epochs == 6


def _tiny_config(**train) -> SegmenterTrainConfig:
    config = SegmenterTrainConfig(model=LungSegmenterConfig(input_size=(64, 64), base_width=8, depth=3))
    values = dict(epochs=6, batch_size=8, lr=5e-3, progress=False, tensorboard=False, num_threads=1, device="cpu")
    for name, value in {**values, **train}.items():
        setattr(config.train, name, value)
    return config


def test_short_training_run_reduces_the_loss_and_saves_the_best_weights(tmp_path):
    run_dir = train_segmenter(_tiny_config(), tmp_path / "run", _ellipse_pairs(16), _ellipse_pairs(4, seed=1))
    losses = [record["loss"] for record in _records(run_dir, "loss")]
    dices = [record["val/dice"] for record in _records(run_dir, "val/dice")]
    assert len(losses) == len(dices) == 6  # one log record and one validation per epoch
    assert losses[-1] < 0.7 * losses[0]
    best = max(dices)
    assert best > 0.5
    # The saved weights are the best epoch's: re-scoring them reproduces the best val Dice.
    model = LungSegmenter.from_pretrained(run_dir)
    assert validation_dice(model, _ellipse_pairs(4, seed=1)) == pytest.approx(best, abs=1e-6)
    assert (run_dir / "model.safetensors").read_bytes() == (run_dir / "best" / "model.safetensors").read_bytes()
    assert json.loads((run_dir / "best" / "best.json").read_text())["value"] == pytest.approx(best)
    assert load_config(SegmenterTrainConfig, run_dir / "config.yaml").train.epochs == 6
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_0000012"  # 6 epochs x 2 steps
    assert all(math.isfinite(record["lr"]) for record in _records(run_dir, "lr"))


def test_phantom_run_learns_and_writes_loadable_best_weights(tmp_path):
    config = _tiny_config(epochs=4, save_checkpoints=False)
    config.data.num_phantoms = 16  # 2 steps per epoch; 8 validation phantoms from the disjoint val seeds
    run_dir = train_segmenter(config, tmp_path / "phantom")
    losses = [record["loss"] for record in _records(run_dir, "loss")]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    model = LungSegmenter.from_pretrained(run_dir)
    assert model.config.input_size == (64, 64)
    assert not (run_dir / "checkpoints").exists()
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best["metric"] == "dice"
    assert best["value"] == pytest.approx(max(r["val/dice"] for r in _records(run_dir, "val/dice")))


def test_a_crashed_run_resumes_to_the_same_best_weights(tmp_path, monkeypatch):
    from cxrfm.training.tasks.segmentation import SegmentationTask

    config = _tiny_config(epochs=4, checkpoint_every_epochs=2)
    pairs, val_pairs = _ellipse_pairs(16), _ellipse_pairs(4, seed=1)
    uninterrupted = train_segmenter(config, tmp_path / "whole", pairs, val_pairs)

    original = SegmentationTask.validate

    def crash_at_step_6(self, model, step):
        if step == 6:
            raise KeyboardInterrupt("killed")
        return original(self, model, step)

    monkeypatch.setattr(SegmentationTask, "validate", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(config, tmp_path / "crashed", pairs, val_pairs)
    assert latest_checkpoint(tmp_path / "crashed" / "checkpoints").name == "step_0000004"
    monkeypatch.setattr(SegmentationTask, "validate", original)
    resumed = train_segmenter(config, tmp_path / "crashed", pairs, val_pairs, resume=True)

    assert (resumed / "best" / "best.json").read_text() == (uninterrupted / "best" / "best.json").read_text()
    first, second = LungSegmenter.from_pretrained(uninterrupted), LungSegmenter.from_pretrained(resumed)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_too_few_pairs_for_one_batch_or_no_validation_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        train_segmenter(_tiny_config(), tmp_path / "small", _ellipse_pairs(3), _ellipse_pairs(2, seed=1))
    with pytest.raises(ConfigError, match="data.splits.*no validation pairs"):
        train_segmenter(_tiny_config(), tmp_path / "no-val", _ellipse_pairs(8), [])
