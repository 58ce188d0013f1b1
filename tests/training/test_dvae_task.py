"""The dVAE objective's temperature schedule and crop."""

import pytest
import torch

from cxrfm.training.augment import random_square_crop
from cxrfm.training.tasks.dvae import DVAETask


def test_temperature_anneals_exponentially_from_start_to_end():
    task = DVAETask(None, temperature=(1.0, 1 / 16))
    assert task.temperature_at(0, 101) == pytest.approx(1.0)
    assert task.temperature_at(50, 101) == pytest.approx(0.25)  # geometric midpoint
    assert task.temperature_at(100, 101) == pytest.approx(1 / 16)


def test_random_square_crop_takes_a_window_of_the_image():
    images = torch.arange(2 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    crops = random_square_crop(images, 6)
    assert crops.shape == (2, 1, 6, 6)
    for image, crop in zip(images, crops):
        top, left = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 10)
        assert torch.equal(crop, image[:, top : top + 6, left : left + 6])
    with pytest.raises(ValueError, match="larger"):
        random_square_crop(images, 12)


def test_images_of_datasets_with_different_label_sets_collate_together():
    from cxrfm.data.sample import CXRSample
    from cxrfm.data.sample import collate_images

    samples = [CXRSample(image=torch.rand(1, 8, 8), labels=torch.zeros(n)) for n in (22, 15)]
    assert collate_images(samples).shape == (2, 1, 8, 8)
