"""Planted corruptions: each kind does what it says, deterministically; the wrapper plants a seeded
share of a phantom dataset and records the kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfm.data.corruptions import CORRUPTION_KINDS, PlantedCorruptions, corrupt_image
from cxrfm.data.registry import DatasetSpec, build_dataset


@pytest.fixture(scope="module")
def phantoms():
    return build_dataset(DatasetSpec(kind="phantom", num_samples=40, cache=True), "train", (64, 64))


@pytest.fixture(scope="module")
def image(phantoms):
    return phantoms[0].image


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_every_kind_keeps_shape_and_range_changes_the_image_and_is_deterministic(kind, image):
    first = corrupt_image(image, kind, np.random.default_rng(3))
    again = corrupt_image(image, kind, np.random.default_rng(3))
    assert first.shape == image.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, again)
    assert (first - image).abs().mean() > 0.01


def test_kinds_mean_what_they_say(image):
    rng = np.random.default_rng
    assert torch.allclose(corrupt_image(image, "inverted", rng(0)), 1 - image)
    assert torch.equal(corrupt_image(image, "lateral_flip", rng(0)), torch.flip(image, dims=(-1,)))
    assert float(corrupt_image(image, "blank", rng(0)).std()) < 0.02
    noisy = corrupt_image(image, "heavy_noise", rng(0))
    assert float((noisy - image).std()) > 0.15  # strong noise, not a tweak
    texture = corrupt_image(image, "non_cxr_texture", rng(5))
    assert torch.equal(texture, corrupt_image(torch.zeros_like(image), "non_cxr_texture", rng(5)))  # not derived from the CXR
    texted = corrupt_image(image, "burnt_in_text", rng(1))
    assert int(((texted - image) > 0.3).sum()) > 30  # bright text drawn in
    crop = corrupt_image(image, "hard_crop", rng(2))
    assert float(crop.std()) < float(image.std())  # a zoomed-in window is smoother than the whole chest


def test_rotation_of_a_non_square_image_keeps_its_size():
    tall = torch.rand(1, 48, 32)
    for seed in range(6):  # quarter turns and large angles
        assert corrupt_image(tall, "rotated", np.random.default_rng(seed)).shape == (1, 48, 32)


def test_bad_kind_or_image_is_refused(image):
    with pytest.raises(ValueError, match="known: inverted"):
        corrupt_image(image, "sepia", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        corrupt_image(image[0], "inverted", np.random.default_rng(0))


def test_planted_corruptions_wrap_phantoms_and_record_the_kind(phantoms):
    planted = PlantedCorruptions(phantoms, fraction=0.2, seed=0)
    assert len(planted) == len(phantoms) and len(planted.planted) == 8
    assert planted.counts() == {kind: 1 for kind in CORRUPTION_KINDS}  # dealt out in turn
    for index in range(len(planted)):
        sample = planted[index]
        kind = planted.kind_of(index)
        assert sample.meta["corruption"] == kind
        if kind is None:
            assert torch.equal(sample.image, phantoms[index].image) and sample.lung_mask is not None
        else:
            assert not torch.equal(sample.image, phantoms[index].image) and sample.lung_mask is None
    index = next(iter(planted.planted))
    assert torch.equal(planted[index].image, planted[index].image)  # the same item on every read
    assert "corruption" not in phantoms[index].meta  # the cached phantom itself is untouched


def test_planting_is_seeded_and_validated(phantoms):
    assert PlantedCorruptions(phantoms, 0.25, seed=1).planted == PlantedCorruptions(phantoms, 0.25, seed=1).planted
    assert PlantedCorruptions(phantoms, 0.25, seed=1).planted != PlantedCorruptions(phantoms, 0.25, seed=2).planted
    assert PlantedCorruptions(phantoms, 0.0).planted == {}
    drawn = PlantedCorruptions(phantoms, 0.5, ("blank", "inverted"), assign="sample", seed=0)
    assert set(drawn.planted.values()) <= {"blank", "inverted"} and len(drawn.planted) == 20
    with pytest.raises(ValueError, match="fraction"):
        PlantedCorruptions(phantoms, 1.5)
    with pytest.raises(ValueError, match="kinds"):
        PlantedCorruptions(phantoms, 0.1, ("smudge",))
    with pytest.raises(ValueError, match="assign"):
        PlantedCorruptions(phantoms, 0.1, assign="round-robin")
