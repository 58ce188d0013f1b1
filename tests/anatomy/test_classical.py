"""The weight-free lung mask: a synthetic chest, and real OpenIST test images."""

import numpy as np
import pytest

from cxrfm.anatomy.classical import classical_lung_mask
from cxrfm.anatomy.postprocess import clean_lung_mask, keep_largest_components
from cxrfm.evaluation.segmentation import dice_score


def _synthetic_chest(height=180, width=220, seed=0):
    """Bright body on a black background, two dark lungs, a bright mediastinum, noise."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = rows / height, columns / width
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.6) ** 2 < 1
    right_lung = ((x - 0.3) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1  # image left
    left_lung = ((x - 0.7) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
    image = np.where(body, 0.7, 0.03) - 0.4 * (right_lung | left_lung)
    image = image + np.random.default_rng(seed).normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), (right_lung | left_lung).astype(np.float32)


def test_finds_both_lungs_of_a_synthetic_chest():
    image, lungs = _synthetic_chest()
    mask = classical_lung_mask(image)
    assert mask.shape == image.shape and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert dice_score(mask, lungs) > 0.9
    # One component per lung, on its own side.
    assert mask[:, : image.shape[1] // 2].sum() > 0 and mask[:, image.shape[1] // 2 :].sum() > 0


def test_an_image_without_lungs_gives_an_empty_mask():
    assert classical_lung_mask(np.full((64, 64), 0.5, dtype=np.float32)).sum() == 0


def test_rejects_non_2d_input():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        classical_lung_mask(np.zeros((1, 32, 32)))


def test_keep_largest_and_clean():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:9, 1:9] = True  # 64 px
    mask[1:7, 12:18] = True  # 36 px
    mask[15:17, 15:17] = True  # 4 px
    assert keep_largest_components(mask, 2).sum() == 100
    assert keep_largest_components(mask, 1).sum() == 64
    assert keep_largest_components(mask, 0).sum() == 104
    mask[3:5, 3:5] = False  # a hole
    cleaned = clean_lung_mask(mask)
    assert cleaned.dtype == np.float32 and cleaned.sum() == 100


@pytest.mark.realdata
def test_reaches_a_reasonable_dice_on_openist_test(shared_data_dir):
    from cxrfm.anatomy.evaluate import segmentation_pairs

    pairs = segmentation_pairs("openist", shared_data_dir / "lung_seg_openist", "test")[:8]
    scores = [dice_score(classical_lung_mask(p.image[0].numpy()), p.mask[0].numpy()) for p in pairs]
    assert len(scores) == 8
    assert np.mean(scores) > 0.8


def test_region_provider_uses_the_classical_fallback():
    import torch

    from cxrfm.anatomy.regions import ChestRegionProvider

    image, lungs = _synthetic_chest(96, 128)
    masks = ChestRegionProvider("classical")(torch.from_numpy(image)[None, None])
    assert masks.shape == (1, 1, 96, 128)
    assert dice_score(masks[0, 0], lungs) > 0.85
