"""The procedural chest phantom: determinism, geometry, findings, labels, dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cxrfm.data.labels import FINDINGS
from cxrfm.data.phantom import (
    PhantomConfig,
    PhantomDataset,
    generate_phantom,
    resolve_findings,
)
from cxrfm.data.phantom.reports import _IMPRESSION_NORMAL, _IMPRESSION_NORMAL_ZH
from cxrfm.data.sample import CXRSample, collate_samples
from cxrfm.errors import ConfigError

SIZE = (128, 128)
SEED = 7


@pytest.fixture(scope="module")
def normal():
    return generate_phantom(SEED, SIZE)


def label(case, name: str) -> float:
    return float(case.labels[FINDINGS.index(name)])


def ctr_from_masks(case) -> float:
    heart_cols = np.flatnonzero(case.heart_mask.any(axis=0))
    chest_cols = np.flatnonzero(case.chest_mask.any(axis=0))
    return (heart_cols[-1] - heart_cols[0] + 1) / (chest_cols[-1] - chest_cols[0] + 1)


def image_half(shape, patient_side: str) -> np.ndarray:
    """Columns of the patient's side: patient right is the image left on a PA film."""
    half = np.zeros(shape, dtype=bool)
    middle = shape[1] // 2
    if patient_side == "right":
        half[:, :middle] = True
    else:
        half[:, middle:] = True
    return half


# --- determinism, shapes, ranges ------------------------------------------------------------


def test_same_seed_is_bit_identical_and_seeds_differ(normal):
    again = generate_phantom(SEED, SIZE)
    assert np.array_equal(normal.image, again.image)
    assert np.array_equal(normal.lung_mask, again.lung_mask)
    assert normal.findings_en == again.findings_en and normal.report_zh == again.report_zh
    other = generate_phantom(SEED + 1, SIZE)
    assert np.abs(normal.image - other.image).mean() > 0.01
    assert not np.array_equal(normal.lung_mask, other.lung_mask)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (160, 96), (128, 128)])
def test_shapes_ranges_and_mask_values(size):
    case = generate_phantom(3, size)
    for array in (case.image, case.lung_mask, case.chest_mask, case.heart_mask):
        assert array.shape == size and array.dtype == np.float32
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert case.image.std() > 0.15  # a radiograph, not a flat field
    for mask in (case.lung_mask, case.chest_mask, case.heart_mask):
        assert set(np.unique(mask)) <= {0.0, 1.0}
    assert case.labels.shape == (len(FINDINGS),)


def test_lung_mask_is_two_lungs_inside_the_chest_and_body(normal):
    lung = normal.lung_mask > 0
    labelled, count = ndimage.label(lung)
    assert count == 2
    centres = ndimage.center_of_mass(lung, labelled, [1, 2])
    assert sorted(c[1] < SIZE[1] / 2 for c in centres) == [False, True]  # one lung per side
    assert 0.15 < lung.mean() < 0.45
    assert not (lung & (normal.chest_mask == 0)).any()
    assert not (lung & (normal.heart_mask > 0)).any()
    # Inside the body: tissue (not air) surrounds the chest, and lungs are darker than the heart.
    ring = ndimage.binary_dilation(normal.chest_mask > 0, iterations=4) & ~(normal.chest_mask > 0)
    assert normal.image[ring].mean() > 0.15
    assert normal.image[lung].mean() + 0.2 < normal.image[normal.heart_mask > 0].mean()
    assert normal.image[:3, :3].mean() < 0.05  # air outside the body is black


def test_chest_mask_contains_heart_and_retrocardiac_region(normal):
    chest = normal.chest_mask > 0
    assert (normal.heart_mask > 0).sum() > 0
    assert not ((normal.heart_mask > 0) & ~chest).any()
    assert chest.sum() > 1.3 * (normal.lung_mask > 0).sum()
    assert ndimage.label(chest)[1] == 1


def test_masks_stay_two_lungs_over_many_seeds_and_findings():
    for seed in range(12):
        for findings in (None, {"Cardiomegaly": 1.0}, {"Pneumothorax": 1.0},
                         {"Pleural Effusion": {"severity": 1.0, "side": "bilateral"}}):
            case = generate_phantom(seed, (80, 96), findings=findings)
            assert ndimage.label(case.lung_mask > 0)[1] == 2, (seed, findings)
            chest = case.chest_mask > 0  # the whole chest is inside the frame
            assert not (chest[0].any() or chest[-1].any() or chest[:, 0].any() or chest[:, -1].any())


# --- normal case ----------------------------------------------------------------------------


def test_normal_case_labels_and_reports(normal):
    assert normal.positive_findings == ["No Finding"]
    assert set(np.unique(normal.labels)) == {0.0, 1.0}
    assert normal.impression_en in _IMPRESSION_NORMAL
    assert normal.impression_zh in _IMPRESSION_NORMAL_ZH
    assert ctr_from_masks(normal) < 0.5
    assert normal.meta["findings"] == {}
    assert normal.report_zh.startswith("检查所见：") and "诊断意见：" in normal.report_zh


# --- findings -------------------------------------------------------------------------------


def test_cardiomegaly_raises_ctr_above_half(normal):
    case = generate_phantom(SEED, SIZE, findings={"Cardiomegaly": 0.5})
    assert ctr_from_masks(case) > 0.5 > ctr_from_masks(normal)
    assert abs(case.meta["cardiothoracic_ratio"] - ctr_from_masks(case)) < 1e-3
    assert label(case, "Cardiomegaly") == 1 and label(case, "Enlarged Cardiomediastinum") == 1
    assert label(case, "No Finding") == 0
    assert "cardiomegaly" in case.findings_en.lower() or "enlarged" in case.findings_en.lower()
    assert "心影" in case.findings_zh and "增大" in case.findings_zh
    # The enlarged heart takes lung field away.
    assert (case.lung_mask > 0).sum() < (normal.lung_mask > 0).sum()


@pytest.mark.parametrize("side", ["left", "right"])
def test_effusion_whitens_the_lower_zone_on_its_side_only(normal, side):
    case = generate_phantom(SEED, SIZE, findings={"Pleural Effusion": {"severity": 0.6, "side": side}})
    lung = normal.lung_mask > 0
    rows = np.flatnonzero(lung.any(axis=1))
    lower = np.zeros_like(lung)
    lower[rows[0] + 2 * (rows[-1] - rows[0]) // 3 :] = True
    this, other = lung & lower & image_half(SIZE, side), lung & lower & ~image_half(SIZE, side)
    assert case.image[this].mean() > normal.image[this].mean() + 0.08
    assert abs(case.image[other].mean() - normal.image[other].mean()) < 0.01
    lost = (normal.lung_mask > 0) & ~(case.lung_mask > 0)
    assert lost[image_half(SIZE, side)].sum() > 0.05 * lung.sum() and not lost[~image_half(SIZE, side)].any()
    assert label(case, "Pleural Effusion") == 1 and case.meta["findings"]["Pleural Effusion"]["side"] == side
    assert f"{side} pleural effusion" in case.findings_en.lower()
    assert ("左侧" if side == "left" else "右侧") in case.findings_zh and "胸腔积液" in case.impression_zh


def test_pneumothorax_collapses_the_lung_mask_on_its_side(normal):
    case = generate_phantom(SEED, SIZE, findings={"Pneumothorax": {"severity": 0.7, "side": "right"}})
    right, left = image_half(SIZE, "right"), image_half(SIZE, "left")
    before, after = normal.lung_mask > 0, case.lung_mask > 0
    assert after[right].sum() < 0.75 * before[right].sum()
    assert np.array_equal(after[left], before[left])
    # Outside the collapsed lung: air without markings, so no brighter than the normal lung was.
    pleural_space = before & ~after & right
    assert case.image[pleural_space].mean() <= normal.image[pleural_space].mean() + 0.01
    options = case.meta["findings"]["Pneumothorax"]
    assert 0.25 < options["collapse"] < 1 and options["size"] in ("small", "moderate", "large")
    assert label(case, "Pneumothorax") == 1
    assert "right" in case.findings_en and "pneumothorax" in case.findings_en.lower()
    assert "右侧" in case.findings_zh and "气胸" in case.findings_zh


def test_nodule_brightens_its_centre(normal):
    case = generate_phantom(SEED, SIZE, findings={"Nodule": {"severity": 0.8, "lobe": "RUL"}})
    options = case.meta["findings"]["Nodule"]
    row, col = (int(round(v)) for v in options["centre_px"])
    assert normal.lung_mask[row, col] == 1 and col < SIZE[1] / 2  # right upper lobe: image left
    patch = (slice(row - 1, row + 2), slice(col - 1, col + 2))
    assert case.image[patch].mean() > normal.image[patch].mean() + 0.1
    assert label(case, "Nodule") == 1 and label(case, "Lung Lesion") == 1
    assert f"{options['diameter_cm']} cm" in case.findings_en and "right upper lobe" in case.findings_en
    assert "右肺上叶" in case.findings_zh and "结节" in case.findings_zh


def test_consolidation_sets_both_opacity_labels_and_whitens_its_lobe(normal):
    case = generate_phantom(SEED, SIZE, findings={"Consolidation": {"severity": 0.8, "lobe": "LLL"}})
    row, col = (int(round(v)) for v in case.meta["findings"]["Consolidation"]["centre_px"])
    patch = (slice(row - 3, row + 4), slice(col - 3, col + 4))
    assert col > SIZE[1] / 2
    assert case.image[patch].mean() > normal.image[patch].mean() + 0.1
    assert label(case, "Consolidation") == 1 and label(case, "Lung Opacity") == 1
    assert "left lower lobe" in case.findings_en and "左肺下叶" in case.findings_zh
    hazy = generate_phantom(SEED, SIZE, findings={"Lung Opacity": 0.5})
    assert label(hazy, "Lung Opacity") == 1 and label(hazy, "Consolidation") == 0


def test_forcing_a_finding_leaves_the_anatomy_and_other_findings_alone(normal):
    probs = {"Nodule": 1.0}
    base = generate_phantom(SEED, SIZE, finding_probs=probs)
    both = generate_phantom(SEED, SIZE, findings={"Cardiomegaly": 0.3}, finding_probs=probs)
    assert base.meta["findings"]["Nodule"] == both.meta["findings"]["Nodule"]
    forced_absent = generate_phantom(SEED, SIZE, findings={"Nodule": 0.0}, finding_probs=probs)
    assert np.array_equal(forced_absent.image, normal.image)


def test_resolve_findings_validates_and_draws():
    rng = np.random.default_rng(0)
    plan = resolve_findings({"effusion": 0.4}, {"Nodule": 1.0, "Pneumothorax": 0.0}, rng)
    assert set(plan) == {"Pleural Effusion", "Nodule"}
    assert plan["Pleural Effusion"]["side"] in ("left", "right", "bilateral")
    assert plan["Nodule"]["lobe"] in ("RUL", "RML", "RLL", "LUL", "LLL")
    for bad in ({"Edema": 0.5}, {"Nodule": 1.5}, {"Pneumothorax": {"side": "bilateral"}}, {"Nodule": {"size": 2}}):
        with pytest.raises(ConfigError):
            resolve_findings(bad, None, rng)
    with pytest.raises(ConfigError):
        PhantomConfig(size=(8, 8))
    with pytest.raises(ValueError):
        generate_phantom(-1, SIZE)


# --- dataset --------------------------------------------------------------------------------


def test_dataset_returns_deterministic_samples():
    dataset = PhantomDataset(4, image_size=(64, 80), seed=100, finding_probs={"Cardiomegaly": 1.0})
    assert len(dataset) == 4 and dataset.label_names == FINDINGS
    sample = dataset[1]
    assert isinstance(sample, CXRSample)
    assert sample.image.shape == (1, 64, 80) and sample.image.dtype == torch.float32
    assert sample.lung_mask.shape == (1, 64, 80) and sample.labels.shape == (len(FINDINGS),)
    assert sample.labels[FINDINGS.index("Cardiomegaly")] == 1
    assert sample.meta["seed"] == 101 and sample.meta["split"] == "train" and sample.meta["report_zh"]
    assert "enlarged" in sample.report.lower() or "cardiomegaly" in sample.report.lower()
    same = generate_phantom(101, (64, 80), finding_probs={"Cardiomegaly": 1.0})
    assert torch.equal(sample.image, torch.from_numpy(same.image)[None])
    assert torch.equal(dataset[1].image, sample.image)
    assert torch.equal(dataset[-1].image, dataset[3].image)
    with pytest.raises(IndexError):
        dataset[4]
    batch = collate_samples([dataset[i] for i in range(3)])
    assert batch.images.shape == (3, 1, 64, 80) and batch.labels.shape == (3, len(FINDINGS))


def test_dataset_splits_do_not_overlap_and_chest_mask_option():
    train = PhantomDataset(2, image_size=(48, 48), finding_probs={})
    val = PhantomDataset(2, image_size=(48, 48), finding_probs={}, split="val", mask="chest")
    assert train[0].meta["seed"] != val[0].meta["seed"]
    assert not torch.equal(train[0].image, val[0].image)
    chest = val[0]
    assert chest.lung_mask.sum() > torch.from_numpy(val.case(0).lung_mask).sum()
    assert chest.labels[FINDINGS.index("No Finding")] == 1
