"""The three shared sets in ../shared/data: counts must match their READMEs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from cxrfm.data import CovidChestXrayDataset, DatasetSpec, IUXrayDataset, OpenISTLungDataset, build_dataset

pytestmark = pytest.mark.realdata


def test_openist_splits_and_masks(shared_data_dir):
    dataset = OpenISTLungDataset(shared_data_dir / "lung_seg_openist")
    assert dataset.split_counts() == {"train": 229, "val": 23, "test": 23}
    assert all(record.mask is not None for record in dataset.records)
    sample = dataset[0]
    assert sample.image.shape == sample.lung_mask.shape and sample.image.shape[-1] == 500
    lung_fraction = float(sample.lung_mask.mean())
    assert abs(lung_fraction - float(sample.meta["lung_fraction"])) < 0.01  # manifest's own figure
    resized = OpenISTLungDataset(shared_data_dir / "lung_seg_openist", split="test", image_size=(64, 64))
    assert len(resized) == 23 and resized.validate().ok


def test_covid_splits_labels_and_masks(shared_data_dir):
    root = shared_data_dir / "covid_chestxray"
    coarse = CovidChestXrayDataset(root, label_set="coarse", mask_source=None)
    assert coarse.split_counts() == {"train": 404, "val": 104, "test": 67}
    # README table: covid19 / other_pneumonia / no_finding per split
    per_split = Counter((r.split, max(r.labels, key=r.labels.get)) for r in coarse.records)
    assert (per_split["train", "COVID-19"], per_split["train", "Other Pneumonia"], per_split["train", "No Finding"]) == (310, 82, 12)
    assert (per_split["test", "COVID-19"], per_split["test", "Other Pneumonia"], per_split["test", "No Finding"]) == (53, 11, 3)
    fine = CovidChestXrayDataset(root)
    totals = Counter(name for r in fine.records for name, value in r.labels.items() if value == 1.0)
    assert (totals["COVID-19"], totals["No Finding"], totals["ARDS"], totals["Influenza"]) == (451, 19, 16, 2)
    assert sum(r.mask is not None for r in fine.records) == 427  # V7 masks
    lungvae = CovidChestXrayDataset(root, mask_source="lungvae", require_mask=True)
    assert len(lungvae) == 192 and lungvae.split_counts() == {"train": 138, "val": 32, "test": 22}
    assert len(CovidChestXrayDataset(root, mask_source="any", require_mask=True)) >= 427
    views = Counter(r.meta["view"] for r in fine.records)
    assert views == {"PA": 297, "AP SUPINE": 132, "AP": 102, "LATERAL": 44}
    sample = CovidChestXrayDataset(root, image_size=(32, 32), notes_as_findings=True)[0]
    assert sample.lung_mask.shape == (1, 32, 32) and sample.lung_mask.sum() > 0
    assert sample.findings.startswith("On January 22, 2020") and sample.labels[0] == 1.0


def test_iu_xray_r2gen_split_without_images(shared_data_dir):
    dataset = IUXrayDataset(shared_data_dir / "iu_xray", images_required=False, views_per_study=2)
    assert dataset.split_counts() == {"train": 2069, "val": 296, "test": 590}
    assert all(record.findings for record in dataset.records)
    with_impression = sum(record.impression is not None for record in dataset.records)
    assert with_impression > 2900  # joined from manifest.jsonl by R2Gen id
    sample = dataset[0]
    assert sample.meta["has_image"] is False and len(sample.meta["extra_images"]) == 1
    assert sample.meta["uid"] == "CXR2384" and sample.findings.startswith("The heart size")


def test_registry_builds_the_shared_sets(shared_data_dir):
    dataset = build_dataset(DatasetSpec(kind="openist", root=str(shared_data_dir / "lung_seg_openist")), "val", image_size=(16, 16))
    assert len(dataset) == 23 and dataset[0].image.shape == (1, 16, 16)
    iu = build_dataset(DatasetSpec(kind="IU_Xray", root=str(shared_data_dir / "iu_xray"), options={"images_required": False}), "test")
    assert len(iu) == 590
    covid = build_dataset(DatasetSpec(kind="covid", root=str(shared_data_dir / "covid_chestxray")), ["val", "test"])
    assert len(covid) == 171 and isinstance(covid[0].labels, torch.Tensor)
