"""Adapters for public datasets, on tiny fixtures written in each dataset's published format."""

from __future__ import annotations

import gzip
import json
import logging
import math

import numpy as np
import pytest
import torch

from cxrfm.data import (
    FINDINGS,
    CheXpertDataset,
    IUXrayDataset,
    MIMICCXRDataset,
    NIHChestXray14Dataset,
    RSNAPneumoniaDataset,
)
from cxrfm.data.rsna import resize_boxes
from cxrfm.errors import DatasetError, ImageReadError

# ---------------------------------------------------------------------------------------- IU-Xray


@pytest.fixture
def iu_root(tmp_path, write_gray, make_ramp):
    """R2Gen layout: annotation.json + images/<id>/0.png, 1.png."""
    studies = {"train": ["CXR1_1_IM-0001", "CXR2_IM-0652"], "val": ["CXR4_IM-2050"], "test": ["CXR5_IM-2117"]}
    annotation = {
        split: [
            {
                "id": study,
                "report": f"Report of {study}.",
                "image_path": [f"{study}/0.png", f"{study}/1.png"],
                "split": split,
            }
            for study in ids
        ]
        for split, ids in studies.items()
    }
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    for number, study in enumerate(sum(studies.values(), [])):
        for view in (0, 1):
            write_gray(tmp_path / "images" / study / f"{view}.png", make_ramp(6, 5, 10 * number + view))
    return tmp_path


def test_iu_xray_two_views_per_study(iu_root, make_ramp):
    dataset = IUXrayDataset(iu_root, views_per_study=2)
    assert dataset.split_counts() == {"train": 2, "val": 1, "test": 1}
    sample = dataset[0]
    assert sample.findings == "Report of CXR1_1_IM-0001." and sample.impression is None
    assert sample.meta["study_id"] == "CXR1_1_IM-0001" and sample.meta["image_paths"][1] == "CXR1_1_IM-0001/1.png"
    view1 = make_ramp(6, 5, 1).astype(np.float32) / 255
    torch.testing.assert_close(sample.meta["extra_images"][0][0], torch.from_numpy(view1), rtol=0, atol=1e-7)
    assert len(IUXrayDataset(iu_root, split="test")) == 1
    assert "extra_images" not in IUXrayDataset(iu_root)[0].meta  # one view by default


def test_iu_xray_missing_images_are_reported(iu_root, caplog):
    (iu_root / "images" / "CXR2_IM-0652" / "0.png").unlink()
    dataset = IUXrayDataset(iu_root)
    assert dataset.missing_images() == [iu_root / "images" / "CXR2_IM-0652" / "0.png"]
    with pytest.raises(ImageReadError, match="CXR2_IM-0652/0.png"):
        dataset[1]
    skipping = IUXrayDataset(iu_root, skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        assert skipping[1].meta["study_id"] == "CXR4_IM-2050"
    assert skipping.skipped_count == 1 and "skipped 1 unreadable" in caplog.text


def test_iu_xray_text_only_without_images(iu_root):
    (iu_root / "images").rename(iu_root / "elsewhere")
    with pytest.raises(DatasetError, match="image_root"):
        IUXrayDataset(iu_root)
    text_only = IUXrayDataset(iu_root, images_required=False, views_per_study=2)
    sample = text_only[3]
    assert sample.meta["has_image"] is False and sample.image.shape == (1, 0, 0)
    assert sample.findings == "Report of CXR5_IM-2117." and sample.meta["split"] == "test"
    with_root = IUXrayDataset(iu_root, image_root=iu_root / "elsewhere")
    assert with_root[0].meta["has_image"] is True


def test_iu_xray_malformed_annotation(tmp_path):
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [{"id": "X", "report": "r"}]}))
    with pytest.raises(DatasetError, match=r"train\[0\] \(X\): 'image_path'"):
        IUXrayDataset(tmp_path, images_required=False)
    with pytest.raises(DatasetError, match="annotation.json: file not found"):
        IUXrayDataset(tmp_path / "nowhere", images_required=False)


# -------------------------------------------------------------------------------------- MIMIC-CXR

MIMIC_LABELS = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,"
    "Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)
MIMIC_METADATA = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
    "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


@pytest.fixture
def mimic_root(tmp_path, write_gray, make_ramp):
    images = [
        ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "train", "PA"),
        ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "train", "LATERAL"),
        ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000764", "57375967", "validate", "AP"),
    ]
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", "wt") as handle:
        handle.write("dicom_id,study_id,subject_id,split\n")
        handle.writelines(f"{d},{st},{su},{sp}\n" for d, su, st, sp, _ in images)
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        f"subject_id,study_id,{MIMIC_LABELS}\n10000032,50414267,,,,,,,,,1.0,,,,,\n"
        "10000764,57375967,,,1.0,,,,,,,-1.0,,-1.0,,\n"
    )
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text(
        MIMIC_METADATA
        + "\n"
        + "".join(f"{d},{su},{st},CHEST (PA AND LAT),{v},3056,2544,21800506,213014.531,,postero-anterior,Erect\n" for d, su, st, _, v in images)
    )
    for number, (dicom, subject, study, _, _) in enumerate(images):
        write_gray(tmp_path / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", make_ramp(8, 8, number))
    report = tmp_path / "mimic-cxr-reports" / "files" / "p10" / "p10000032" / "s50414267.txt"
    report.parent.mkdir(parents=True)
    report.write_text(REPORT)
    return tmp_path


def test_mimic_images_labels_views_and_reports(mimic_root):
    dataset = MIMICCXRDataset(mimic_root)
    assert dataset.split_counts() == {"train": 2, "val": 1}  # "validate" -> "val"
    assert dataset.label_names[0] == "Atelectasis" and len(dataset.label_names) == 14
    first = dataset[0]
    assert first.image.shape == (1, 8, 8)
    assert first.findings.startswith("There is no focal consolidation") and first.findings.endswith("nipple shadows.")
    assert first.impression == "No acute cardiopulmonary process."
    assert first.meta["view"] == "PA" and first.meta["patient_id"] == "10000032" and first.meta["rows"] == "3056"
    assert first.labels[dataset.label_names.index("No Finding")] == 1.0
    assert int(torch.isnan(first.labels).sum()) == 13
    third = dataset[2]
    assert third.labels[dataset.label_names.index("Pleural Effusion")] == -1.0  # uncertain kept
    assert third.findings is None and third.impression is None  # no report file for that study
    frontal = MIMICCXRDataset(mimic_root, views=("PA", "AP"))
    assert [s.meta["view"] for s in frontal] == ["PA", "AP"]
    aligned = MIMICCXRDataset(mimic_root, align_to=FINDINGS, split="val")
    assert aligned[0].labels[FINDINGS.index("Consolidation")] == 1.0


def test_mimic_missing_split_file(tmp_path):
    with pytest.raises(DatasetError, match="mimic-cxr-2.0.0-split.csv: file not found"):
        MIMICCXRDataset(tmp_path)


# --------------------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices\n"
)


@pytest.fixture
def chexpert_root(tmp_path, write_gray, make_ramp):
    root = tmp_path / "CheXpert-v1.0-small"
    paths = [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg",
        "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
    ]
    for number, path in enumerate(paths):
        write_gray(tmp_path / path, make_ramp(6, 6, number))
    (root / "train.csv").write_text(
        CHEXPERT_HEADER
        + f"{paths[0]},Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0\n"
        + f"{paths[1]},Male,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,\n"
    )
    (root / "valid.csv").write_text(CHEXPERT_HEADER + f"{paths[2]},Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    return root


def test_chexpert_labels_uncertain_and_blank_views_and_splits(chexpert_root):
    dataset = CheXpertDataset(chexpert_root)
    assert dataset.split_counts() == {"train": 2, "val": 1}
    assert dataset.label_names[0] == "No Finding" and len(dataset.label_names) == 14
    first, second, third = dataset[0], dataset[1], dataset[2]
    assert first.labels[0] == 1.0 and first.labels[13] == 1.0 and first.labels[9] == 0.0
    assert math.isnan(first.labels[1])  # blank = not mentioned
    assert second.labels[2] == -1.0 and second.labels[3] == 1.0  # uncertain kept as -1
    assert first.meta["view"] == "AP" and second.meta["view"] == "LATERAL"
    assert first.meta["patient_id"] == "patient00001" and first.meta["study_id"] == "patient00001/study1"
    assert (first.meta["sex"], first.meta["age"]) == ("Female", 68)
    assert third.meta["split"] == "val" and not torch.isnan(third.labels).any()
    assert len(CheXpertDataset(chexpert_root, views=["PA", "AP"])) == 2


def test_chexpert_errors(tmp_path):
    with pytest.raises(DatasetError, match="no CheXpert label file"):
        CheXpertDataset(tmp_path)
    (tmp_path / "train.csv").write_text("Path,Sex,Age\nx.jpg,Male,3\n")
    with pytest.raises(DatasetError, match=r"train.csv: missing column\(s\) \['Frontal/Lateral', 'AP/PA'\]"):
        CheXpertDataset(tmp_path)


# ------------------------------------------------------------------------------ NIH ChestX-ray14

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


@pytest.fixture
def nih_root(tmp_path, write_gray, make_ramp):
    rows = [
        "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
        "00000003_000.png,Hernia|Pleural_Thickening|Effusion,0,3,074Y,F,AP,2048,2500,0.168,0.168",
    ]
    (tmp_path / "Data_Entry_2017.csv").write_text(NIH_HEADER + "\n".join(rows) + "\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    for number, row in enumerate(rows):
        folder = "images_001/images" if number < 2 else "images_002/images"
        write_gray(tmp_path / folder / row.split(",")[0], make_ramp(4, 4, number))
    return tmp_path


def test_nih_labels_splits_images_and_meta(nih_root):
    dataset = NIHChestXray14Dataset(nih_root)
    assert dataset.split_counts() == {"train": 3, "test": 1}
    names = dataset.label_names
    second, fourth = dataset[1], dataset[3]
    assert {names[i] for i in torch.nonzero(second.labels).flatten().tolist()} == {"Cardiomegaly", "Emphysema"}
    assert {names[i] for i in torch.nonzero(fourth.labels).flatten().tolist()} == {"Hernia", "Pleural_Thickening", "Effusion"}
    assert dataset[2].labels[names.index("No Finding")] == 1.0 and dataset[2].labels.sum() == 1.0
    assert fourth.meta["age"] == 74 and fourth.meta["view"] == "AP" and fourth.meta["sex"] == "F"
    assert second.meta["original_width"] == 2894 and second.meta["pixel_spacing_y"] == 0.143
    assert second.meta["follow_up"] == 1 and second.meta["patient_id"] == "1"
    assert fourth.meta["path"].endswith("images_002/images/00000003_000.png")
    aligned = NIHChestXray14Dataset(nih_root, align_to=FINDINGS)
    assert aligned[3].labels[FINDINGS.index("Pleural Effusion")] == 1.0


def test_nih_validation_fraction_is_patient_level(nih_root):
    dataset = NIHChestXray14Dataset(nih_root, val_fraction=0.5)
    by_patient = {}
    for record in dataset.records:
        by_patient.setdefault(record.meta["patient_id"], set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert by_patient["3"] == {"test"}
    again = NIHChestXray14Dataset(nih_root, val_fraction=0.5)
    assert [r.split for r in again.records] == [r.split for r in dataset.records]


def test_nih_unknown_label_names_the_line(nih_root):
    path = nih_root / "Data_Entry_2017.csv"
    path.write_text(path.read_text() + "00000004_000.png,Cardiomegaly|Dragons,0,4,30,F,PA,1,1,0.1,0.1\n")
    with pytest.raises(DatasetError, match=r"line 6: unknown finding label\(s\) \['Dragons'\]"):
        NIHChestXray14Dataset(nih_root)


# ------------------------------------------------------------------------------- RSNA Pneumonia


@pytest.fixture
def rsna_root(tmp_path, write_dicom, make_ramp):
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0\n"
        "00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1\n"
        "00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1\n"
    )
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\n"
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6,No Lung Opacity / Not Normal\n"
        "00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity\n"
        "00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity\n"
    )
    for number, patient in enumerate(("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00436515-870c-4b36-a041-de91049b9ab4")):
        write_dicom(tmp_path / "stage_2_train_images" / f"{patient}.dcm", make_ramp(8, 16, number, dtype=np.uint16))
    return tmp_path


def test_rsna_boxes_labels_and_classes(rsna_root):
    dataset = RSNAPneumoniaDataset(rsna_root)
    assert dataset.label_names == ("Pneumonia", "Lung Opacity") and len(dataset) == 2
    negative, positive = dataset[0], dataset[1]
    assert negative.labels.tolist() == [0.0, 0.0] and negative.meta["boxes"] == []
    assert negative.meta["class"] == "No Lung Opacity / Not Normal"
    assert positive.labels.tolist() == [1.0, 1.0]
    assert positive.meta["boxes"] == [[264.0, 152.0, 213.0, 379.0], [562.0, 152.0, 256.0, 453.0]]
    assert positive.image.shape == (1, 8, 16) and positive.meta["original_size"] == [8, 16]
    assert set(dataset.split_counts()) <= {"train", "val", "test"}
    assert [r.split for r in RSNAPneumoniaDataset(rsna_root).records] == [r.split for r in dataset.records]


def test_rsna_boxes_follow_the_resize(rsna_root):
    resized = RSNAPneumoniaDataset(rsna_root, image_size=(16, 16))[1]
    # 8x16 padded into 16x16: scale 1, 4 rows of padding on top.
    assert resized.meta["boxes_resized"][0] == [264.0, 156.0, 213.0, 379.0]
    assert resize_boxes([[2, 2, 4, 4]], (10, 20), (20, 20), "stretch") == [[2.0, 4.0, 4.0, 8.0]]


def test_rsna_inconsistent_target_names_the_line(rsna_root):
    path = rsna_root / "stage_2_train_labels.csv"
    path.write_text(path.read_text() + "0004cfab-14fd-4e49-80ba-63a80b6bddd6,1.0,2.0,3.0,4.0,1\n")
    with pytest.raises(DatasetError, match="line 5: patient 0004cfab.* both Target 0 and 1"):
        RSNAPneumoniaDataset(rsna_root)
