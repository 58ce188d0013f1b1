"""The MAE pretraining task on tiny synthetic chest-like images."""

from __future__ import annotations

import json

import pytest
import torch

from cxrfm.config import from_dict, load_config
from cxrfm.data.sample import collate_samples
from cxrfm.errors import ConfigError
from cxrfm.models import MaskedAutoencoder, VisionTransformer
from cxrfm.training.augment import random_resized_crop
from cxrfm.training.contract import StepContext
from cxrfm.training.tasks.mae import MAEPretrainTask
from cxrfm.recipes.pretrain import PretrainConfig, build_model, resolve_image_size, run_pretraining, build_task

from .toy_run import TwoLungs


def _config(tmp_path, **train) -> PretrainConfig:
    data = {
        "model": {"preset": "mae-tiny-cpu", "overrides": {"image_size": [64, 64], "depth": 2}},
        "masking": {"kind": "context", "ratio_inside": 0.75, "ratio_outside": 0.5, "region": "given"},
        "augment": {"random_resized_crop": True, "intensity_jitter": 0.1},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 6,
            "batch_size": 4,
            "lr": 1e-3,
            "warmup_steps": 2,
            "log_every": 2,
            "figure_every": 3,
            "figure_samples": 2,
            "device": "cpu",
            "progress_bar": False,
            **train,
        },
    }
    return from_dict(PretrainConfig, data)


def test_training_step_masks_the_lungs_harder_and_is_keyed_per_sample(tmp_path):
    config = _config(tmp_path)
    model = build_model(config.model, (64, 64))
    task = build_task(config)
    batch = collate_samples([TwoLungs()[i] for i in range(4)])
    batch.meta = [dict(m, index=i) for i, m in enumerate(batch.meta)]
    ctx = StepContext(0, 0, 0, 7, torch.device("cpu"), 0, 1, config.train)
    outputs = task.training_step(model, batch, ctx)
    assert outputs["loss"].requires_grad and torch.isfinite(outputs["loss"])
    assert outputs["mask_ratio_inside"] > outputs["mask_ratio_outside"]
    assert outputs["mask_ratio_inside"] == pytest.approx(0.75, abs=0.1)
    # Sample 2 is masked the same whether it is first in a batch of 2 or third in a batch of 4.
    _, full = task.mask_batch(model, batch.images, batch.lung_masks, torch.arange(4), seed=7, epoch=0, stream=1)
    _, part = task.mask_batch(model, batch.images[2:], batch.lung_masks[2:], torch.arange(2, 4), seed=7, epoch=0, stream=1)
    assert torch.equal(full.mask[2:], part.mask)


def test_random_resized_crop_keeps_image_and_mask_aligned():
    sample = TwoLungs(size=32)[0]
    images, masks = sample.image[None].repeat(3, 1, 1, 1), sample.lung_mask[None].repeat(3, 1, 1, 1)
    identity = torch.tensor([[1.0, 0.5, 0.5, 0.5]] * 3)  # area 1, aspect 1, centred
    same, same_masks = random_resized_crop(images, identity, scale=(1.0, 1.0), masks=masks)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    assert torch.equal(same_masks, masks)
    zoom = torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0], [0.5, 0.2, 0.3, 0.9]])
    cropped, cropped_masks = random_resized_crop(images, zoom, scale=(0.25, 1.0), masks=masks)
    assert not torch.allclose(cropped[0], cropped[1])
    # Dark pixels (lungs) stay under the cropped lung mask.
    dark = cropped < 0.45
    assert (cropped_masks[dark] == 1).float().mean() > 0.95


def test_run_pretraining_end_to_end_writes_outputs_and_learns(tmp_path, monkeypatch):
    import cxrfm.recipes.pretrain as pretrain

    monkeypatch.setattr(pretrain, "build_pretrain_dataset", lambda section, size: TwoLungs(16, size[0]))
    config = _config(tmp_path, max_steps=20, lr=3e-3, log_every=5, figure_every=10, tensorboard=False)
    result = run_pretraining(config)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 20 and records[-1]["loss"] < 0.7 * records[0]["loss"]
    assert result.metrics["mask_ratio_inside"] > result.metrics["mask_ratio_outside"]
    assert sorted(p.name for p in (run / "figures").glob("*.png")) == [
        "reconstruction_step_0000010.png",
        "reconstruction_step_0000020.png",
    ]
    # Checkpoint folders are save_pretrained folders: the whole MAE loads from one.
    reloaded = MaskedAutoencoder.from_pretrained(run / "checkpoints" / "step_0000020")
    assert reloaded.config.encoder.depth == 2
    encoder = VisionTransformer.from_pretrained(run / "encoder")
    assert encoder.config.image_size == (64, 64) and encoder.config.depth == 2
    saved = load_config(PretrainConfig, run / "config.yaml")
    assert saved.masking.ratio_inside == 0.75 and saved.train.max_steps == 20


def test_image_size_conflicts_are_config_errors(tmp_path):
    config = _config(tmp_path)
    config.data.image_size = (32, 32)
    with pytest.raises(ConfigError, match="image_size"):
        resolve_image_size(config)
    config.model.overrides = {}
    config.data.image_size = (64, 64)
    assert resolve_image_size(config) == (64, 64)


class _CrashAt(MAEPretrainTask):
    crash_step = 4

    def training_step(self, model, batch, ctx):
        if ctx.step == self.crash_step:
            raise RuntimeError("simulated crash")
        return super().training_step(model, batch, ctx)


def test_shard_stream_trains_and_resumes_by_skipping_ahead(tmp_path):
    from safetensors.torch import load_file

    from cxrfm.data.shards import ShardDataset, write_shards
    from cxrfm.training.checkpoint import latest_checkpoint
    from cxrfm.recipes.pretrain import build_region_provider
    from cxrfm.training.loop import Trainer

    write_shards(TwoLungs(24), tmp_path / "shards", max_samples_per_shard=6)

    def run(name, task_class, resume=False):
        config = _config(tmp_path / name, max_steps=8, checkpoint_every=3, figure_every=0, tensorboard=False)
        config.augment.random_resized_crop = False
        torch.manual_seed(0)
        model = build_model(config.model)
        task = task_class(config.masking, build_region_provider(config.masking), augment=config.augment)
        task.on_figure = task.on_train_end = None
        stream = ShardDataset(tmp_path / "shards", shuffle=True, shuffle_buffer=8, seed=3)
        return Trainer(model, task, stream, config.train).fit(resume=resume)

    clean = run("clean", MAEPretrainTask)
    assert clean.step == 8  # 24 samples / batch 4 = 6 steps per epoch: crosses into epoch 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("crashed", _CrashAt)
    resumed = run("crashed", MAEPretrainTask, resume=True)
    assert resumed.step == 8
    expected = load_file(str(latest_checkpoint(tmp_path / "clean" / "run" / "checkpoints") / "model.safetensors"))
    got = load_file(str(latest_checkpoint(tmp_path / "crashed" / "run" / "checkpoints") / "model.safetensors"))
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.parametrize("region", ["segmenter", "classical", "rectangle"])
def test_region_sources_feed_the_masker(tmp_path, region):
    from cxrfm.anatomy.segmenter import PRESETS, LungSegmenter

    config = _config(tmp_path)
    config.masking.region = region
    if region == "segmenter":
        torch.manual_seed(0)
        LungSegmenter(PRESETS["tiny"]).save_pretrained(tmp_path / "segmenter")
        config.masking.segmenter_weights = str(tmp_path / "segmenter")
    task = build_task(config)
    model = build_model(config.model, (64, 64))
    batch = collate_samples([TwoLungs()[i] for i in range(2)])
    regions, masking = task.mask_batch(model, batch.images, None, torch.arange(2), seed=0, epoch=0, stream=1)
    assert regions.shape == (2, 1, 64, 64) and set(regions.unique().tolist()) <= {0.0, 1.0}
    assert masking.mask.shape == (2, model.num_patches)
    if region == "rectangle":  # the reference box: a fixed share of the patches is "inside"
        assert torch.equal(regions[0], regions[1]) and 0.2 < regions.mean() < 0.5


def test_segmenter_region_without_weights_is_a_config_error(tmp_path):
    config = _config(tmp_path)
    config.masking.region = "segmenter"
    with pytest.raises(ConfigError, match="segmenter_weights"):
        build_task(config)


def test_cached_regions_are_computed_once_per_sample_and_change_nothing(tmp_path):
    config = _config(tmp_path)
    config.masking.region = "classical"
    calls = []

    class CountingProvider:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, images, given_masks=None):
            calls.append(images.shape[0])
            return self.inner(images, given_masks)

    from cxrfm.recipes.pretrain import build_region_provider

    batch = collate_samples([TwoLungs()[i] for i in range(4)])
    batch.meta = [dict(m, index=i) for i, m in enumerate(batch.meta)]
    model = build_model(config.model, (64, 64))
    ctx = StepContext(0, 0, 0, 7, torch.device("cpu"), 0, 1, config.train)
    config.augment.random_resized_crop = False  # regions of the same pixels either way
    plain = build_task(config).training_step(model, batch, ctx)

    config.masking.cache_regions = True
    cached_task = build_task(config, region_provider=CountingProvider(build_region_provider(config.masking)))
    first = cached_task.training_step(model, batch, ctx)
    second = cached_task.training_step(model, batch, StepContext(1, 1, 0, 7, torch.device("cpu"), 0, 1, config.train))
    assert calls == [4]  # one provider call for the 4 samples; the second step reused the cache
    assert torch.equal(first["loss"], plain["loss"]) and torch.isfinite(second["loss"])
    assert first["region_fraction"] == plain["region_fraction"]
