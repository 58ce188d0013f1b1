"""``skip_unreadable=True`` skips any failure of one item's read and never loses the epoch.

Without skipping, the same failures surface as ImageReadError / DatasetError naming the file (and
the item), never as a raw exception from a decoder.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from torch.utils.data import DataLoader

import cxrfm.data.dataset as dataset_module
from cxrfm.data import CXRDataset, ImageFolderDataset, collate_samples
from cxrfm.errors import DatasetError, ImageReadError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on its broken files

GOOD = ("a_good.png", "c_good.dcm", "e_good.png")


def _corrupt_dicom(path, write_dicom, make_ramp):
    """A valid DICOM header whose NumberOfFrames is '1A' (pydicom's badVR defect)."""
    write_dicom(path, make_ramp(6, 8, 3, dtype=np.uint16))
    dataset = pydicom.dcmread(path)
    tag = pydicom.tag.Tag("NumberOfFrames")
    dataset[tag] = pydicom.dataelem.RawDataElement(tag, "IS", 2, b"1A", 0, False, True)
    dataset.save_as(path)


def _truncated_png(path, write_gray, make_ramp):
    write_gray(path, make_ramp(32, 32, 5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def folder(tmp_path, write_gray, write_dicom, make_ramp):
    """Three good images among a corrupt DICOM, pydicom's badVR.dcm, a text file named .png and a truncated PNG."""
    root = tmp_path / "images"
    write_gray(root / "a_good.png", make_ramp(6, 8, 0))
    _corrupt_dicom(root / "b_bad_frames.dcm", write_dicom, make_ramp)
    write_dicom(root / "c_good.dcm", make_ramp(6, 8, 1, dtype=np.uint16))
    (root / "d_notes.png").write_text("Findings: no acute process.\n")
    write_gray(root / "e_good.png", make_ramp(6, 8, 2))
    _truncated_png(root / "f_cut.png", write_gray, make_ramp)
    shutil.copy(get_testdata_file("badVR.dcm"), root / "g_badVR.dcm")
    return root


BAD = ("b_bad_frames.dcm", "d_notes.png", "f_cut.png", "g_badVR.dcm")


def test_epoch_yields_only_the_good_items_and_logs_the_count(folder, caplog):
    dataset = ImageFolderDataset(folder, skip_unreadable=True, image_size=(6, 8), log_every=1)
    assert len(dataset) == 7
    with caplog.at_level(logging.WARNING, logger="cxrfm.data.dataset"):
        paths = [dataset[index].meta["path"].rsplit("/", 1)[-1] for index in range(len(dataset))]
    # each bad item is replaced by the next readable one (deterministic, wrapping around)
    assert paths == ["a_good.png", "c_good.dcm", "c_good.dcm", "e_good.png", "e_good.png", "a_good.png", "a_good.png"]
    assert set(paths) == set(GOOD)
    assert sorted(p.rsplit("/", 1)[-1] for p in dataset.skipped_paths) == sorted(BAD)
    # every skip counts (g_badVR twice: after f_cut at index 5, and as index 6), 4 distinct files
    assert dataset.skipped_count == 5
    assert "skipped 5 unreadable item(s) so far (4 distinct file(s))" in caplog.text


def test_a_dataloader_epoch_completes(folder):
    dataset = ImageFolderDataset(folder, skip_unreadable=True, image_size=(6, 8))
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=collate_samples))
    assert sum(batch.images.shape[0] for batch in batches) == 7 and dataset.skipped_count == 5


@pytest.mark.parametrize("name", BAD)
def test_without_skipping_each_bad_file_is_an_image_read_error_naming_it(folder, name):
    dataset = ImageFolderDataset(folder)
    index = [path.name for path in (r.image for r in dataset.records)].index(name)
    with pytest.raises(ImageReadError) as caught:
        dataset[index]
    assert caught.value.path == str(folder / name) and name in str(caught.value)


def test_validate_lists_every_bad_file(folder):
    report = ImageFolderDataset(folder).validate()
    assert sorted(item.path.rsplit("/", 1)[-1] for item in report.unreadable) == sorted(BAD)


# ----------------------------------------------------------------- failures other than the image
@pytest.fixture
def three(tmp_path, write_gray, make_ramp):
    return [{"image": write_gray(tmp_path / f"{n}.png", make_ramp(4, 4, n)), "labels": {"Effusion": 1.0}} for n in range(3)]


class _DecoderBug(Exception):
    pass


def test_an_unexpected_exception_is_wrapped_naming_the_item_then_skipped(three, monkeypatch, caplog):
    real = dataset_module.read_image

    def flaky(path, **kwargs):
        if str(path).endswith("1.png"):
            raise _DecoderBug("odd bytes")
        return real(path, **kwargs)

    monkeypatch.setattr(dataset_module, "read_image", flaky)
    strict = CXRDataset(three, label_names=("Effusion",))
    with pytest.raises(ImageReadError, match=r"item 1: unexpected _DecoderBug") as caught:
        strict[1]
    assert caught.value.path.endswith("1.png") and isinstance(caught.value.__cause__, _DecoderBug)
    lenient = CXRDataset(three, label_names=("Effusion",), skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="cxrfm.data.dataset"):
        assert lenient[1].meta["index"] == 2
    assert lenient.skipped_count == 1 and lenient.skipped_paths[0].endswith("1.png")
    assert "skipped 1 unreadable" in caplog.text


def test_a_mismatched_mask_is_skipped(three, tmp_path, write_gray):
    three[0]["mask"] = write_gray(tmp_path / "m.png", np.ones((3, 3), np.uint8))
    with pytest.raises(DatasetError, match="m.png"):
        CXRDataset(three)[0]  # still never used with the wrong pixels
    lenient = CXRDataset(three, skip_unreadable=True)
    assert lenient[0].meta["index"] == 1 and lenient.skipped_paths == [str(tmp_path / "m.png")]


def test_an_unreadable_report_file_is_skipped(three, tmp_path, monkeypatch):
    (tmp_path / "r.txt").write_text("FINDINGS: clear.")
    three[2]["report_file"] = tmp_path / "r.txt"

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(dataset_module, "read_report", denied)
    with pytest.raises(DatasetError, match=r"r.txt: cannot read the report file \(Permission denied\)"):
        CXRDataset(three)[2]
    assert CXRDataset(three, skip_unreadable=True)[2].meta["index"] == 0


def test_a_label_that_is_not_a_number_is_skipped(three):
    three[1]["labels"] = {"Effusion": "yes please"}
    with pytest.raises(DatasetError, match=r"item 1: label value\(s\) \{'Effusion': 'yes please'\}"):
        CXRDataset(three, label_names=("Effusion",))[1]
    assert CXRDataset(three, label_names=("Effusion",), skip_unreadable=True)[1].meta["index"] == 2


def test_an_annotate_failure_on_one_item_is_wrapped_and_skipped(three):
    class Boxes(CXRDataset):
        def annotate(self, sample):
            if sample.meta["index"] == 0:
                raise KeyError("boxes")
            return sample

    with pytest.raises(ImageReadError, match="item 0: unexpected KeyError"):
        Boxes(three)[0]
    assert Boxes(three, skip_unreadable=True)[0].meta["index"] == 1


def test_a_transform_bug_is_not_swallowed(three):
    def transform(sample):
        raise ValueError("bug in user code")

    with pytest.raises(ValueError, match="bug in user code"):
        CXRDataset(three, transform=transform, skip_unreadable=True)[0]


def test_nothing_readable_is_still_a_dataset_error(folder):
    for name in GOOD:
        (folder / name).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="none of the 7 images"):
        ImageFolderDataset(folder, skip_unreadable=True)[0]


def test_a_record_with_a_non_path_image_is_a_dataset_error():
    with pytest.raises(DatasetError, match="record 1"):
        CXRDataset([{"image": "a.png"}, {"image": 42}])
