"""Benchmark helpers: the lung-envelope handling of the V7 / OpenIST convention difference."""

import numpy as np
import torch

from cxrfm.anatomy.evaluate import SegmentationPair, evaluate_masks, lung_envelope


def _notched_lungs():
    """Two lungs; the right-hand one has a 'heart notch' cut out of its lower medial corner."""
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:35, 5:25] = True
    mask[5:35, 35:55] = True
    mask[22:35, 35:43] = False  # the notch: OpenIST-style masks stop at the heart border
    return mask


def test_envelope_fills_the_heart_notch_and_keeps_lungs_apart():
    notched = _notched_lungs()
    envelope = lung_envelope(notched)
    assert envelope[25, 39]  # inside the former notch, under the lung's convex hull
    assert not envelope[20, 30]  # the gap between the lungs stays empty
    full = notched.copy()
    full[22:35, 35:43] = True
    # The hull of the notched lung is its diagonal-cut envelope: close to the full lung.
    assert (envelope & full).sum() / full.sum() > 0.9


def test_evaluate_masks_reports_raw_and_envelope_scores():
    notched = _notched_lungs()
    full = notched.copy()
    full[22:35, 35:43] = True  # a V7-style reference that includes the retro-cardiac region
    pair = SegmentationPair(torch.zeros(1, 40, 60), torch.from_numpy(full.astype(np.float32))[None], "case")
    result = evaluate_masks(lambda image: notched.astype(np.float32), [pair], envelope=True)
    row = result["per_image"][0]
    assert row["name"] == "case"
    assert row["dice"] < row["dice_envelope"]  # the convention gap is (mostly) taken out
    assert result["raw"]["dice"]["n"] == 1
    assert result["envelope"]["dice"]["mean"] == row["dice_envelope"]


def test_pairs_from_a_generic_manifest(tmp_path):
    from cxrfm.anatomy.evaluate import segmentation_pairs
    from cxrfm.io import write_image

    for index in range(3):
        write_image(tmp_path / f"image{index}.png", np.full((12, 16), 0.5))
        mask = np.zeros((12, 16))
        mask[2:10, 3 + index : 8 + index] = 1
        write_image(tmp_path / f"mask{index}.png", mask)
    rows = ["image,mask,split"] + [f"image{i}.png,mask{i}.png,{'test' if i else 'train'}" for i in range(3)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    pairs = segmentation_pairs("manifest", tmp_path / "manifest.csv", "test")
    assert [pair.name for pair in pairs] == ["image1", "image2"]
    assert pairs[0].mask.shape == (1, 12, 16) and pairs[0].mask.sum() == 40
