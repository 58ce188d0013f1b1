"""CXRDataset: loading, resizing, labels, filtering, skipping unreadable images, validation."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from cxrfm.data import FINDINGS, CXRDataset, CXRRecord, collate_samples
from cxrfm.errors import DatasetError, ImageReadError

LABELS = ("Effusion", "Nodule", "Made-up finding")


@pytest.fixture
def items(tmp_path, write_gray, make_ramp):
    """Four 8x12 images (one with a mask), labelled, in splits train/train/val/test."""
    records = []
    for number, split in enumerate(("train", "train", "val", "test")):
        image = write_gray(tmp_path / f"img{number}.png", make_ramp(8, 12, offset=number))
        records.append(
            {
                "image": image,
                "labels": {"Effusion": float(number % 2), "Nodule": -1.0},
                "findings": f"finding {number}",
                "split": split,
                "meta": {"view": "PA" if number < 3 else "LL", "patient_id": f"p{number}"},
            }
        )
    mask = np.zeros((8, 12), dtype=np.uint8)
    mask[2:6, 3:9] = 255
    records[0]["mask"] = write_gray(tmp_path / "mask0.png", mask)
    return records


def test_sample_carries_pixels_mask_labels_text_and_meta(items, make_ramp):
    dataset = CXRDataset(items, label_names=LABELS)
    sample = dataset[0]
    assert sample.image.shape == (1, 8, 12) and sample.image.dtype == torch.float32
    expected = torch.from_numpy(make_ramp(8, 12, offset=0).astype(np.float32) / 255)
    torch.testing.assert_close(sample.image[0], expected, rtol=0, atol=1e-7)
    assert sample.lung_mask.shape == (1, 8, 12)
    assert sample.lung_mask.sum() == 24 and set(sample.lung_mask.unique().tolist()) == {0.0, 1.0}
    assert sample.labels[:2].tolist() == [0.0, -1.0] and math.isnan(sample.labels[2])
    assert sample.findings == "finding 0" and sample.impression is None
    assert sample.meta["split"] == "train" and sample.meta["index"] == 0
    assert sample.meta["original_size"] == [8, 12] and sample.meta["has_image"] is True
    assert sample.meta["path"].endswith("img0.png") and sample.meta["patient_id"] == "p0"
    assert dataset[1].lung_mask is None


def test_resize_pad_keeps_aspect_ratio_and_moves_the_mask_with_the_image(items):
    dataset = CXRDataset(items, image_size=(12, 12))
    sample = dataset[0]
    assert sample.image.shape == (1, 12, 12) and sample.lung_mask.shape == (1, 12, 12)
    # 8x12 in a 12x12 canvas: 2 black rows above and below.
    assert sample.image[0, :2].abs().sum() == 0 and sample.image[0, -2:].abs().sum() == 0
    assert sample.image[0, 2:10].sum() > 0
    rows = torch.nonzero(sample.lung_mask[0].sum(dim=1)).flatten()
    assert rows.min() == 4 and rows.max() == 7  # mask rows 2..5 shifted by the 2-row pad
    stretched = CXRDataset(items, image_size=(12, 12), resize_mode="stretch")[0]
    assert stretched.image[0, 0].sum() > 0  # no padding when stretching


def test_split_and_view_filters(items):
    assert len(CXRDataset(items, split="train")) == 2
    assert CXRDataset(items, split=["val", "test"]).split_counts() == {"val": 1, "test": 1}
    assert len(CXRDataset(items, split="validation")) == 1  # published spellings normalised
    assert len(CXRDataset(items, views=["lateral"])) == 1  # "LL" is a lateral view
    with pytest.raises(DatasetError, match=r"no item has split \['unknown'\].*train"):
        CXRDataset(items, split="unknown")


def test_align_to_the_shared_vocabulary(items):
    dataset = CXRDataset(items, label_names=LABELS, align_to=FINDINGS)
    labels = dataset[1].labels
    assert dataset.label_names == FINDINGS and labels.shape == (len(FINDINGS),)
    assert labels[FINDINGS.index("Pleural Effusion")] == 1.0
    assert labels[FINDINGS.index("Nodule")] == -1.0
    assert int(torch.isnan(labels).sum()) == len(FINDINGS) - 2


def test_unreadable_image_raises_naming_the_file(items, tmp_path):
    (tmp_path / "img1.png").write_bytes(b"not an image at all")
    dataset = CXRDataset(items)
    with pytest.raises(ImageReadError, match="img1.png"):
        dataset[1]


def test_skip_unreadable_returns_the_next_item_and_logs_the_count(items, tmp_path, caplog):
    (tmp_path / "img1.png").write_bytes(b"garbage")
    (tmp_path / "img3.png").unlink()
    dataset = CXRDataset(items, skip_unreadable=True, log_every=2)
    with caplog.at_level(logging.WARNING, logger="cxrfm.data.dataset"):
        assert dataset[1].meta["index"] == 2  # deterministic: the next readable item
        assert dataset[3].meta["index"] == 0  # wraps around at the end
        assert dataset[1].meta["index"] == 2  # a known bad item is skipped again (and counted)
    assert dataset.skipped_count == 3
    assert [p.rsplit("/", 1)[-1] for p in dataset.skipped_paths] == ["img1.png", "img3.png"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # the first skip, then every log_every=2 skips
    assert "skipped 1 unreadable" in messages[0] and "img1.png" in messages[0]
    assert "skipped 2 unreadable" in messages[1] and "2 distinct" in messages[1]


def test_nothing_readable_is_a_dataset_error(items, tmp_path):
    for number in range(4):
        (tmp_path / f"img{number}.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="none of the 4 images"):
        CXRDataset(items, skip_unreadable=True)[0]


def test_validate_lists_unreadable_files_and_mismatched_masks(items, tmp_path, write_gray):
    (tmp_path / "img2.png").write_bytes(b"\x89PNG truncated")
    write_gray(tmp_path / "mask0.png", np.zeros((5, 5), dtype=np.uint8))
    report = CXRDataset(items).validate()
    assert report.num_checked == 4 and not report.ok
    assert [(item.index, item.path.rsplit("/", 1)[-1]) for item in report.unreadable] == [
        (0, "mask0.png"),
        (2, "img2.png"),
    ]
    assert "mask is (5, 5)" in report.unreadable[0].reason and "4 item(s)" in report.summary()
    with pytest.raises(DatasetError, match="mask0.png"):
        CXRDataset(items)[0]  # a mismatched mask would mark the wrong pixels


def test_missing_images_and_text_only_placeholders(items, tmp_path):
    (tmp_path / "img2.png").unlink()
    dataset = CXRDataset(items, label_names=LABELS, images_required=False, image_size=(6, 6))
    assert dataset.missing_images() == [tmp_path / "img2.png"]
    sample = dataset[2]
    assert sample.meta["has_image"] is False and sample.meta["original_size"] is None
    assert torch.equal(sample.image, torch.zeros(1, 6, 6))
    assert sample.findings == "finding 2" and sample.labels[0] == 0.0
    assert dataset[0].meta["has_image"] is True


def test_transform_iteration_and_collate(items):
    flip = lambda sample: type(sample)(**{**sample.__dict__, "image": sample.image.flip(-1)})  # noqa: E731
    dataset = CXRDataset(items, label_names=LABELS, transform=flip, image_size=(8, 8))
    plain = CXRDataset(items, label_names=LABELS, image_size=(8, 8))
    assert torch.equal(dataset[0].image, plain[0].image.flip(-1))
    assert len(list(dataset)) == 4  # IndexError ends iteration
    with pytest.raises(IndexError):
        dataset[4]
    batch = collate_samples([dataset[i] for i in range(4)])
    assert batch.images.shape == (4, 1, 8, 8) and batch.labels.shape == (4, 3)
    assert batch.has_lung_mask.tolist() == [True, False, False, False]


def test_records_from_dicts_are_checked():
    with pytest.raises(DatasetError, match="unknown field"):
        CXRDataset([{"image": "a.png", "lables": {}}])
    with pytest.raises(DatasetError, match="no 'image'"):
        CXRDataset([{"mask": "a.png"}])
    record = CXRRecord(image="a.png", extra_images=["b.png", None])
    assert record.image.name == "a.png" and record.extra_images[1] is None
