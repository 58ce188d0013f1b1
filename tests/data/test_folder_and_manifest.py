"""ImageFolderDataset and ManifestDataset on tiny fixtures, including malformed manifests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrfm.data import ImageFolderDataset, ManifestDataset
from cxrfm.errors import DatasetError


# ----------------------------------------------------------------------------------------- folder


@pytest.fixture
def image_folder(tmp_path, write_gray, write_dicom, make_ramp):
    root = tmp_path / "images"
    write_gray(root / "train" / "a.png", make_ramp(6, 6, 1))
    write_gray(root / "train" / "nested" / "b.JPG", make_ramp(6, 6, 2))
    write_gray(root / "valid" / "c.tif", make_ramp(6, 6, 3, dtype=np.uint16))
    write_dicom(root / "test" / "d.dcm", make_ramp(6, 6, 4, dtype=np.uint16))
    write_gray(root / "loose.png", make_ramp(6, 6, 5))
    (root / "notes.txt").write_text("not an image")
    masks = tmp_path / "masks"
    write_gray(masks / "a.png", np.full((6, 6), 255, dtype=np.uint8))
    return root, masks


def test_folder_lists_every_image_with_splits_and_masks(image_folder):
    root, masks = image_folder
    dataset = ImageFolderDataset(root, mask_root=masks)
    names = [record.image.name for record in dataset.records]
    assert names == ["loose.png", "d.dcm", "a.png", "b.JPG", "c.tif"]  # sorted by path
    assert [r.split for r in dataset.records] == [None, "test", "train", "train", "val"]
    by_name = {record.image.name: record for record in dataset.records}
    assert by_name["a.png"].mask == masks / "a.png" and by_name["b.JPG"].mask is None
    sample = dataset[names.index("a.png")]
    assert sample.lung_mask.sum() == 36 and sample.image.shape == (1, 6, 6)
    assert dataset[names.index("d.dcm")].image.max() == 1.0  # DICOM read through cxrfm.io
    assert len(ImageFolderDataset(root, split="train")) == 2


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty")


def test_mask_folder_inside_the_image_folder_is_not_listed_as_images(tmp_path, write_gray, make_ramp):
    write_gray(tmp_path / "a.png", make_ramp(4, 4))
    write_gray(tmp_path / "masks" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    dataset = ImageFolderDataset(tmp_path, mask_root=tmp_path / "masks")
    assert len(dataset) == 1 and dataset.records[0].mask == tmp_path / "masks" / "a.png"


# --------------------------------------------------------------------------------------- manifest

CSV_HEADER = "image,mask,split,findings,impression,view,patient_id,study_id,Effusion,No_Finding,age\n"


@pytest.fixture
def csv_manifest(tmp_path, write_gray, make_ramp):
    for number in range(3):
        write_gray(tmp_path / "img" / f"{number}.png", make_ramp(5, 7, number))
    write_gray(tmp_path / "img" / "m0.png", np.ones((5, 7), dtype=np.uint8))
    path = tmp_path / "manifest.csv"
    path.write_text(
        CSV_HEADER
        + "img/0.png,img/m0.png,train,Clear lungs.,Normal.,PA,P1,S1,0,1,41\n"
        + 'img/1.png,,validate,"Left effusion, small.",,AP,P2,S2,1,0,\n'
        + "img/2.png,,test,,,LATERAL,P2,S3,-1,,63\n"
    )
    return path


def test_csv_manifest_reads_paths_text_labels_and_meta(csv_manifest):
    dataset = ManifestDataset(csv_manifest)
    assert dataset.label_names == ("Effusion", "No_Finding")  # detected: they canonicalise
    assert [r.split for r in dataset.records] == ["train", "val", "test"]
    first, second, third = dataset[0], dataset[1], dataset[2]
    assert first.lung_mask.sum() == 35 and second.lung_mask is None
    assert first.findings == "Clear lungs." and first.impression == "Normal."
    assert second.findings == "Left effusion, small." and second.impression is None
    assert first.labels.tolist() == [0.0, 1.0]
    assert third.labels[0] == -1.0 and math.isnan(third.labels[1])
    assert first.meta["age"] == "41" and second.meta["age"] is None
    assert (first.meta["view"], first.meta["patient_id"], first.meta["study_id"]) == ("PA", "P1", "S1")
    assert third.meta["view"] == "LATERAL" and third.meta["manifest_line"] == 4
    # a folder holding manifest.csv works too; declared label columns win over detection
    declared = ManifestDataset(csv_manifest.parent, label_columns=["No_Finding"])
    assert declared.label_names == ("No_Finding",) and "Effusion" in declared[0].meta


def test_jsonl_manifest_with_reports_and_multi_view_images(tmp_path, write_gray, make_ramp):
    for name in ("a0", "a1", "b0"):
        write_gray(tmp_path / f"{name}.png", make_ramp(4, 4, len(name)))
    rows = [
        {"image": ["a0.png", "a1.png"], "report": "FINDINGS: Heart normal.\nIMPRESSION: No acute disease.", "split": "train"},
        {"image": str(tmp_path / "b0.png"), "report": "Lungs are clear.", "pneumonia": 1, "split": "test"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    dataset = ManifestDataset(path)
    assert dataset.label_names == ("pneumonia",)
    first, second = dataset[0], dataset[1]
    assert (first.findings, first.impression) == ("Heart normal.", "No acute disease.")
    assert len(first.meta["extra_images"]) == 1 and first.meta["extra_images"][0].shape == (1, 4, 4)
    assert second.findings == "Lungs are clear." and second.labels.tolist() == [1.0]
    assert math.isnan(first.labels[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,split\na.png,train\n", r"missing column\(s\) \['image'\]"),
        (CSV_HEADER + "a.png,,train,,,PA,P1,S1,0,1\n", "line 2: expected 11 fields, got 10"),
        (CSV_HEADER + "a.png,,train,,,PA,P1,S1,0,1,3\n,,train,,,PA,P1,S1,0,1,3\n", "line 3: column 'image' is empty"),
        (CSV_HEADER + "a.png,,train,,,PA,P1,S1,maybe,1,3\n", "line 2: column 'Effusion' has a non-numeric label 'maybe'"),
        ("", "empty file"),
        (CSV_HEADER, "no rows"),
    ],
)
def test_malformed_csv_manifest_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as error:
        ManifestDataset(path)
    assert str(path) in str(error.value)


def test_malformed_jsonl_and_missing_manifest(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "a.png"}\n{"image": \n')
    with pytest.raises(DatasetError, match="line 2: invalid JSON"):
        ManifestDataset(path)
    with pytest.raises(DatasetError, match="manifest not found"):
        ManifestDataset(tmp_path / "absent.csv")
    with pytest.raises(DatasetError, match="no manifest"):
        ManifestDataset(tmp_path)
    (tmp_path / "m.csv").write_text("image,Effusion\na.png,1\n")
    with pytest.raises(DatasetError, match=r"label column\(s\) \['Nodule'\] not found"):
        ManifestDataset(tmp_path / "m.csv", label_columns=["Nodule"])
