"""Manifests and adapter tables as users really ship them: read correctly, or DatasetError naming
the file and the line / field - never a raw UnicodeDecodeError, TypeError or gzip error."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cxrfm.data import (
    CheXpertDataset,
    IUXrayDataset,
    ManifestDataset,
    NIHChestXray14Dataset,
    RSNAPneumoniaDataset,
)
from cxrfm.data.openist import OpenISTLungDataset
from cxrfm.data.tables import parse_age, parse_label_value, read_csv_rows, read_json
from cxrfm.errors import DatasetError


@pytest.fixture
def images(tmp_path, write_gray, make_ramp):
    for number in range(2):
        write_gray(tmp_path / f"{number}.png", make_ramp(4, 6, number))
    return tmp_path


CSV = "image,split,findings,Effusion\n0.png,train,\"Small, left.\",1\n1.png,test,,0\n"
JSONL_ROWS = [
    {"image": "0.png", "split": "train", "findings": "Small, left.", "Effusion": 1},
    {"image": "1.png", "split": "test", "Effusion": 0},
]
JSONL = "".join(json.dumps(row) + "\n" for row in JSONL_ROWS)


def _check_reads(path: Path) -> None:
    dataset = ManifestDataset(path)
    assert dataset.label_names == ("Effusion",) and len(dataset) == 2
    assert [r.split for r in dataset.records] == ["train", "test"]
    assert dataset[0].findings == "Small, left." and dataset[0].labels.tolist() == [1.0]
    assert dataset[1].labels.tolist() == [0.0] and dataset[1].image.shape == (1, 4, 6)


# ------------------------------------------------------------------------------ read correctly
@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("m.csv.gz", gzip.compress(CSV.encode())),
        ("m.jsonl.gz", gzip.compress(JSONL.encode())),
        ("m.csv", b"\xef\xbb\xbf" + CSV.encode()),  # UTF-8 byte-order mark (Excel's "CSV UTF-8")
        ("m.csv.gz", gzip.compress(b"\xef\xbb\xbf" + CSV.encode())),  # BOM inside gzip: was '\ufeffimage'
        ("m.jsonl", b"\xef\xbb\xbf" + JSONL.encode()),
        ("m.tsv", CSV.replace(",", "\t").replace('"Small\t left."', "Small, left.").encode()),
        ("m.tsv.gz", gzip.compress(CSV.replace(",", "\t").replace('"Small\t left."', "Small, left.").encode())),
        ("m.csv", CSV.replace("\n", "\r\n").encode()),
    ],
    ids=["csv_gz", "jsonl_gz", "csv_bom", "csv_gz_bom", "jsonl_bom", "tsv", "tsv_gz", "crlf"],
)
def test_manifest_variants_read_correctly(images, name, data):
    path = images / name
    path.write_bytes(data)
    _check_reads(path)


def test_folder_with_a_gzipped_or_tsv_manifest(images):
    (images / "manifest.tsv").write_text(CSV.replace(",", "\t").replace('"Small\t left."', "Small, left."))
    _check_reads(images)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("yes", 1.0), ("no", 0.0), ("NaN", math.nan), ("-1.0", -1.0), ("TRUE", 1.0), (" ", math.nan)],
)
def test_accepted_label_spellings(images, cell, expected):
    (images / "m.csv").write_text(f"image,Effusion\n0.png,{cell}\n")
    value = ManifestDataset(images / "m.csv")[0].labels[0].item()
    assert (math.isnan(value) and math.isnan(expected)) or value == expected


def test_json_nan_and_null_labels_are_unknown(images):
    (images / "m.jsonl").write_text('{"image": "0.png", "Effusion": NaN, "Nodule": null}\n')
    labels = ManifestDataset(images / "m.jsonl")[0].labels
    assert labels.isnan().all()


# ---------------------------------------------------------------------- DatasetError, named
@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("m.jsonl", JSONL.encode() + '{"image": "0.png", "findings": "caf\u00e9"}\n'.encode("latin-1"), "line 3: not UTF-8"),
        ("m.csv", CSV.encode() + "0.png,train,caf\u00e9,1\n".encode("latin-1"), "line 4: not UTF-8"),
        ("m.csv", CSV.encode("utf-16"), "UTF-16"),
        ("m.jsonl", b'{"image": "0.png", "report": 42}\n', "line 1: field 'report' must be a string, got int"),
        ("m.jsonl", b'{"image": "0.png"}\n{"image": "1.png", "findings": ["a", "b"]}\n', "line 2: field 'findings' must be a string"),
        ("m.jsonl", b'{"image": "0.png", "split": 1}\n', "line 1: field 'split' must be a string"),
        ("m.csv", b"image,Effusion\n0.png,1\n1.png,2\n", "line 3: column 'Effusion' has label '2'"),
        ("m.csv", b"image,Effusion\n0.png,0.5\n", "line 2: column 'Effusion' has label '0.5'"),
        ("m.csv", b"image,Effusion\n0.png,inf\n", "line 2: column 'Effusion' has label 'inf'"),
        ("m.jsonl", b'{"image": "0.png", "Effusion": 2}\n', "line 1: column 'Effusion' has label 2"),
        ("m.jsonl", b'{"image": "0.png", "Effusion": [1]}\n', "line 1: column 'Effusion' has a non-numeric label"),
        ("m.csv", b"image,Effusion\n0.png,positive\n", "line 2: column 'Effusion' has a non-numeric label 'positive'"),
        ("m.csv", b"path,Effusion\n0.png,1\n", r"missing column\(s\) \['image'\]"),
        ("m.jsonl", b'{"path": "0.png"}\n', r"missing column\(s\) \['image'\]"),
        ("m.jsonl", b'{"image": "0.png"}\n{"Effusion": 1}\n', "line 2: column 'image' is empty"),
        ("m.csv", b"", "empty file"),
        ("m.csv.gz", gzip.compress(b""), "empty file"),
        ("m.jsonl", b"", "no rows"),
        ("m.jsonl", b"\n\n  \n", "no rows"),
        ("m.jsonl", b'{"image": "0.png"}\n["1.png"]\n', "line 2: expected a JSON object, got list"),
        ("m.jsonl", b'"0.png"\n', "line 1: expected a JSON object, got str"),
        ("m.jsonl", b"null\n", "line 1: expected a JSON object, got null"),
        ("m.jsonl", b"3\n", "line 1: expected a JSON object, got int"),
        ("m.jsonl", b"[" * 100_000 + b"\n", "line 1: invalid JSON"),
        ("m.csv.gz", CSV.encode(), "gzip"),  # plain text named .gz
        ("m.csv.gz", gzip.compress(CSV.encode() * 50)[:60], "gzip"),  # truncated download
        ("m.csv", b"image,Effusion,image\n0.png,1,1.png\n", r"line 1: column name\(s\) \['image'\] appear more than once"),
        ("m.csv", b"image,Effusion\n0.png,1,extra\n", "line 2: expected 2 fields, got 3"),
        ("m.csv", b"image,Effusion\n0\x00.png,1\n", "line 2: column .image. holds a NUL"),
        ("m.jsonl", b'{"image": "a\\u0000.png"}\n', "line 1: column 'image' holds a NUL"),
        ("m.txt", CSV.encode(), "unknown manifest format"),
    ],
    ids=[
        "jsonl_latin1", "csv_latin1", "csv_utf16", "report_int", "findings_list", "split_int", "label_2",
        "label_half", "label_inf", "json_label_2", "json_label_list", "label_word", "csv_no_image_column",
        "jsonl_no_image_field", "jsonl_row_without_image", "empty_csv", "empty_csv_gz", "empty_jsonl",
        "blank_jsonl", "json_array_line", "json_string_line", "json_null_line", "json_number_line",
        "json_too_deep", "not_gzip", "truncated_gzip", "duplicate_column", "extra_field", "nul_in_csv",
        "nul_in_json_path", "unknown_suffix",
    ],
)
def test_bad_manifest_raises_dataset_error_naming_file_and_line(images, name, data, message):
    path = images / name
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=message) as caught:
        ManifestDataset(path)
    assert caught.value.source == str(path) and str(path) in str(caught.value)


def test_read_json_errors_name_file_and_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'{\n  "train": [\n    1,\n  ]\n}\n')
    with pytest.raises(DatasetError, match="a.json: line 4: invalid JSON"):
        read_json(path)
    path.write_bytes('{"x": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(DatasetError, match="a.json: line 1: not UTF-8"):
        read_json(path)


def test_label_and_age_parsers_reject_or_drop_out_of_range_values():
    for bad in (2, 0.5, float("inf"), "3", [1], {"v": 1}):
        with pytest.raises(DatasetError, match="f.csv: line 7: column 'c'"):
            parse_label_value(bad, Path("f.csv"), 7, "c")
    assert parse_label_value(-0.0, "f", 1, "c") == 0.0 and math.isnan(parse_label_value(float("nan"), "f", 1, "c"))
    assert [parse_age(v) for v in ("inf", "1e400", "nan", "-inf")] == [None] * 4  # used to raise OverflowError


def test_csv_reader_tsv_and_header_bom(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"\xef\xbb\xbfa\tb\n1,5\t2\n")
    assert read_csv_rows(path, required=("a",)) == (["a", "b"], [(2, {"a": "1,5", "b": "2"})])


# ------------------------------------------------------------------------------- adapter tables
def test_rsna_bad_target_and_box_name_the_line(tmp_path):
    path = tmp_path / "stage_2_train_labels.csv"
    path.write_text("patientId,x,y,width,height,Target\np1,,,,,2\n")
    with pytest.raises(DatasetError, match="line 2: Target must be 0 or 1"):
        RSNAPneumoniaDataset(tmp_path)
    path.write_text("patientId,x,y,width,height,Target\np1,abc,1,2,3,1\n")
    with pytest.raises(DatasetError, match="line 2: column 'x' is not a number"):
        RSNAPneumoniaDataset(tmp_path)
    path.write_text("patientId,x,y,width,height,Target\np1,1,1,inf,3,1\n")
    with pytest.raises(DatasetError, match="line 2: column 'width' is not a finite number"):
        RSNAPneumoniaDataset(tmp_path)
    path.write_text("patientId,x,y,width,height,Target\np1,600.0,152.0,213.0,379.0,1\n")
    assert RSNAPneumoniaDataset(tmp_path).records[0].meta["boxes"] == [[600.0, 152.0, 213.0, 379.0]]  # boxes are not labels


def test_chexpert_label_outside_the_scheme_names_file_line_and_column(tmp_path):
    (tmp_path / "train.csv").write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,Edema\nCheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg,F,1,Frontal,AP,2.0\n"
    )
    with pytest.raises(DatasetError, match=r"train.csv: line 2: column 'Edema' has label '2.0'"):
        CheXpertDataset(tmp_path)


NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def test_nih_non_utf8_list_and_infinite_numbers(tmp_path, write_gray, make_ramp):
    (tmp_path / "Data_Entry_2017.csv").write_text(NIH_HEADER + "a.png,No Finding,nan,1,inf,M,PA\n")
    write_gray(tmp_path / "images" / "a.png", make_ramp(4, 4))
    dataset = NIHChestXray14Dataset(tmp_path)  # used to raise ValueError / OverflowError
    assert dataset.records[0].meta["follow_up"] == 0 and dataset.records[0].meta["age"] is None
    (tmp_path / "test_list.txt").write_bytes(b"a.png\n\xff\xfe.png\n")
    with pytest.raises(DatasetError, match=r"test_list.txt: line 2: not UTF-8"):
        NIHChestXray14Dataset(tmp_path)


def test_iu_xray_non_string_fields_name_the_entry(tmp_path):
    annotation = {"train": [{"id": "X", "report": 7, "image_path": ["X/0.png"]}]}
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    with pytest.raises(DatasetError, match=r"train\[0\] \(X\): field 'report' must be a string"):
        IUXrayDataset(tmp_path, images_required=False)
    annotation["train"][0]["report"] = "fine"
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    (tmp_path / "manifest.jsonl").write_text('{"r2gen_id": ["X"]}\n')
    with pytest.raises(DatasetError, match="manifest.jsonl: line 1: field 'r2gen_id' must be a string"):
        IUXrayDataset(tmp_path, images_required=False)
    (tmp_path / "manifest.jsonl").write_text('{"r2gen_id": "X", "impression": {"text": "n"}}\n')
    with pytest.raises(DatasetError, match="line 1: field 'impression' must be a string"):
        IUXrayDataset(tmp_path, images_required=False)


def test_openist_empty_mask_cell_names_the_line(tmp_path, write_gray):
    write_gray(tmp_path / "a.jpg", np.zeros((4, 4), np.uint8))
    (tmp_path / "manifest.csv").write_text("image,mask,split\na.jpg,,train\n")
    with pytest.raises(DatasetError, match=r"manifest.csv: line 2: column\(s\) \['mask'\] empty"):
        OpenISTLungDataset(tmp_path)
