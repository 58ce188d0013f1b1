"""The LNFS pipeline without training: the combination's arithmetic, save / load, refused inputs and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.noise_filter import (
    LatentDiscriminator,
    LatentDiscriminatorConfig,
    LatentReconstructor,
    LatentReconstructorConfig,
)
from cxrfm.pipelines.noise_filter import (
    FILTER_FILE,
    LOGIT_SCALE_FLOOR,
    FilterParameters,
    LatentNoiseFilter,
    fit_parameters,
    robust_center_scale,
)


def parameters(**changes) -> FilterParameters:
    values = dict(latent_shape=[2, 4, 4], latent_mean=[0.5, -1.0], latent_std=[2.0, 0.5], reconstruction_center=-2.0,
                  reconstruction_scale=0.5, discriminator_center=-4.0, discriminator_scale=2.0, reconstruction_weight=0.25,
                  threshold=3.0, combination="max")
    return FilterParameters(**{**values, **changes})


def untrained_filter(**changes) -> LatentNoiseFilter:
    torch.manual_seed(0)
    reconstructor = LatentReconstructor(LatentReconstructorConfig(in_channels=2, hidden_channels=4, depth=1, bottleneck_channels=2, norm_groups=2))
    discriminator = LatentDiscriminator(LatentDiscriminatorConfig(in_channels=2, hidden_channels=4, depth=2, norm_groups=2))
    return LatentNoiseFilter(reconstructor, discriminator, parameters(**changes), batch_size=3)


def test_combination_is_the_max_or_weighted_mean_of_robust_z_scores():
    errors, logits = np.exp(np.array([-2.0, -1.0, -2.5])), np.array([-4.0, -4.0, 2.0])
    z_rec, z_dis = np.array([0.0, 2.0, -1.0]), np.array([0.0, 0.0, 3.0])
    np.testing.assert_allclose(untrained_filter().combine(errors, logits), np.maximum(z_rec, z_dis), atol=1e-9)
    np.testing.assert_allclose(untrained_filter(combination="mean").combine(errors, logits), 0.25 * z_rec + 0.75 * z_dis, atol=1e-9)


def test_robust_scale_ignores_a_few_outliers_and_the_logit_scale_has_a_floor():
    values = np.concatenate([np.random.default_rng(0).normal(1.0, 2.0, 2000), np.full(40, 1e6)])
    center, scale = robust_center_scale(values)
    assert abs(center - 1.0) < 0.2 and abs(scale - 2.0) < 0.2
    assert robust_center_scale(np.full(5, 3.0)) == (3.0, 1.0)  # constant scores: no division by zero
    saturated = np.full(100, -6.0) + np.linspace(-0.01, 0.01, 100)
    fitted = fit_parameters(torch.zeros(100, 1, 2, 2), np.full(100, 0.1), saturated, latent_mean=[0.0], latent_std=[1.0])
    assert fitted.discriminator_scale == LOGIT_SCALE_FLOOR and fitted.latent_shape == [1, 2, 2]


def test_scores_are_batched_and_round_trip_through_the_folder(tmp_path):
    noise_filter = untrained_filter()
    latents = torch.randn(7, 2, 4, 4)  # 7 items in batches of 3
    scores = noise_filter.score(latents, progress=False)
    assert set(scores) == {"reconstruction_error", "discriminator_logit", "discriminator_probability", "combined"}
    assert all(v.shape == (7,) and v.dtype == np.float64 for v in scores.values())
    assert ((scores["discriminator_probability"] > 0) & (scores["discriminator_probability"] < 1)).all()
    one_batch = LatentNoiseFilter(noise_filter.reconstructor, noise_filter.discriminator, noise_filter.parameters, batch_size=64)
    np.testing.assert_allclose(one_batch.score(latents, progress=False)["combined"], scores["combined"], rtol=1e-5)
    noise_filter.save_pretrained(tmp_path / "f", extra={"counts": {"items": 7}})
    loaded = LatentNoiseFilter.from_pretrained(tmp_path / "f", batch_size=3)
    assert loaded.parameters == noise_filter.parameters
    assert np.array_equal(loaded.score(latents, progress=False)["combined"], scores["combined"])
    assert np.array_equal(loaded.is_noisy(latents), scores["combined"] >= 3.0)


def test_latents_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"\(N, 2, 4, 4\)"):
        untrained_filter().score(torch.randn(3, 2, 8, 8), progress=False)


def test_bad_parameters_and_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="latent_std"):
        parameters(latent_std=[1.0, 0.0])
    with pytest.raises(ValueError, match="latent_mean"):
        parameters(latent_mean=[0.0])
    with pytest.raises(ValueError, match="combination"):
        parameters(combination="sum")
    with pytest.raises(CheckpointError, match=FILTER_FILE):
        LatentNoiseFilter.from_pretrained(tmp_path)
    folder = untrained_filter().save_pretrained(tmp_path / "f")
    record = json.loads((folder / FILTER_FILE).read_text())
    record["parameters"]["threshold"] = "high"
    (folder / FILTER_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="threshold"):
        LatentNoiseFilter.from_pretrained(folder)
    record["parameters"].update(threshold=3.0, latent_shape=[4, 4, 4], latent_mean=[0.0] * 4, latent_std=[1.0] * 4)
    (folder / FILTER_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="channels"):
        LatentNoiseFilter.from_pretrained(folder)
    (folder / FILTER_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="format"):
        LatentNoiseFilter.from_pretrained(folder)
