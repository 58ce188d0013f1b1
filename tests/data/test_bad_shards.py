"""Bad shard input never escapes raw: every failure is a DatasetError naming the file (and sample key)."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest

from cxrfm.cli.main import main
from cxrfm.data import CXRDataset, ShardDataset, read_shard_index, write_shards
from cxrfm.data.shards import decode_image
from cxrfm.errors import DatasetError

LABELS = ("Pneumonia", "Effusion")
KEY = "000000001"  # the second sample of the first shard


@pytest.fixture
def shards(tmp_path, write_gray):
    """Four 8x8 samples with masks, labels and findings, two per shard."""
    rng = np.random.default_rng(1)
    records = []
    for number in range(4):
        image = write_gray(tmp_path / "src" / f"{number}.png", rng.integers(0, 65536, (8, 8), dtype=np.uint16))
        mask = write_gray(tmp_path / "src" / f"{number}_mask.png", np.full((8, 8), 255, dtype=np.uint8))
        records.append({"image": image, "mask": mask, "labels": {"Pneumonia": 1.0}, "findings": f"f{number}"})
    write_shards(CXRDataset(records, label_names=LABELS, source="fixture"), tmp_path / "shards", (8, 8), max_samples_per_shard=2)
    return tmp_path / "shards"


def _members(path):
    with tarfile.open(path) as tar:
        return [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]


def _rewrite(path, members):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _edit_member(folder, suffix, data):
    """Replace (bytes) or drop (None) member KEY.suffix of the first shard; add it when absent."""
    shard = folder / "shard-000000.tar"
    name = f"{KEY}.{suffix}"
    members = [(n, d) for n, d in _members(shard) if n != name]
    if data is not None:
        members.append((name, data))
        members.sort(key=lambda item: item[0].split(".")[0])  # keep the sample's members together
    _rewrite(shard, members)
    return shard


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _png(height, width):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _raises_naming(dataset_or_call, *parts):
    """Iterate (or call) and check the DatasetError's message names every one of ``parts``."""
    with pytest.raises(DatasetError) as info:
        if callable(dataset_or_call):
            dataset_or_call()
        else:
            list(dataset_or_call)
    message = str(info.value)
    for part in parts:
        assert str(part) in message, (part, message)
    return info.value


# ------------------------------------------------------------------------------- sample members

BAD_MEMBERS = {
    "corrupt image": ("image.png", b"\x89PNG\r\n\x1a\n broken"),
    "not an image": ("image.png", b"plain text"),
    "truncated image": ("image.png", None),  # filled in below: a real PNG cut in half
    "image of the wrong size": ("image.png", _png(16, 8)),
    "corrupt mask": ("mask.png", b"garbage"),
    "mask of the wrong size": ("mask.png", _png(4, 4)),
    "labels not npy": ("labels.npy", b"not numpy"),
    "labels pickled objects": ("labels.npy", _npy(np.array([object()], dtype=object))),
    "labels of text dtype": ("labels.npy", _npy(np.array(["a", "b"]))),
    "labels 2-D": ("labels.npy", _npy(np.zeros((2, 2), dtype=np.float32))),
    "labels of the wrong length": ("labels.npy", _npy(np.zeros(3, dtype=np.float32))),
    "meta not JSON": ("meta.json", b"{not json"),
    "meta a list": ("meta.json", b"[1, 2]"),
    "meta not UTF-8": ("meta.json", b'{"a": "\xff"}'),
    "meta nested too deeply": ("meta.json", b"[" * 100_000 + b"]" * 100_000),
    "findings not UTF-8": ("findings.txt", b"caf\xe9"),
    "missing meta.json": ("meta.json", "drop"),
    "missing image": ("image.png", "drop"),
    "corrupt extra view": ("view1.png", b"garbage"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_bad_member_names_shard_key_and_member(shards, case):
    suffix, data = BAD_MEMBERS[case]
    if data is None:
        original = dict(_members(shards / "shard-000000.tar"))[f"{KEY}.image.png"]
        data = original[: len(original) // 2]
    shard = _edit_member(shards, suffix, None if data == "drop" else data)
    error = _raises_naming(ShardDataset(shards), shard, f"sample {KEY}")
    assert error.source == str(shard)
    if data != "drop":
        assert f"{KEY}.{suffix}" in str(error)


def test_bad_member_is_skipped_and_counted_with_skip_unreadable(shards, caplog):
    _edit_member(shards, "image.png", b"garbage")
    dataset = ShardDataset(shards, skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="cxrfm.data.shards"):
        keys = [sample.meta["shard_key"] for sample in dataset]
    assert keys == ["000000000", "000000002", "000000003"]
    assert dataset.skipped_count == 1 and dataset.skipped_keys == [f"{shards / 'shard-000000.tar'}:{KEY}"]
    assert any("skipped 1 unreadable sample" in record.getMessage() and KEY in record.getMessage() for record in caplog.records)


def test_unknown_members_are_ignored(shards):
    _edit_member(shards, "viewfoo.png", b"whatever")  # a name starting with "view" used to crash int()
    assert len(list(ShardDataset(shards))) == 4


# ------------------------------------------------------------------------------ whole shard files


def test_shard_that_is_not_a_tar(shards):
    shard = shards / "shard-000001.tar"
    shard.write_bytes(b"this is not a tar file" * 100)
    _raises_naming(ShardDataset(shards), shard, "not a readable tar")
    _raises_naming(ShardDataset(shards, skip_unreadable=True), shard)  # a whole shard: never skipped


def test_truncated_tar(shards):
    shard = shards / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    shard.write_bytes(shard.read_bytes()[: last.offset_data + last.size // 2])  # cut inside the last member
    _raises_naming(ShardDataset(shards), shard, "truncated")


def test_tar_cut_at_a_sample_boundary_is_caught_by_the_count(shards):
    shard = shards / "shard-000000.tar"
    _rewrite(shard, [(n, d) for n, d in _members(shard) if not n.startswith(KEY)])  # a valid tar, one sample short
    _raises_naming(ShardDataset(shards), shard, "holds 1 sample(s)", "lists 2")


def test_duplicate_member_in_a_sample(shards):
    shard = shards / "shard-000000.tar"
    members = _members(shard)
    _rewrite(shard, members + [members[-1]])
    _raises_naming(ShardDataset(shards), shard)


# ------------------------------------------------------------------------------------- index.json

BAD_INDEXES = {
    "a list": (b"[1, 2, 3]", "JSON object"),
    "not UTF-8": (b'{"format": "\xff"}', "UTF-8"),
    "invalid JSON": (b'{"format":\n  oops}', "line 2"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "nested"),
    "shard outside the folder": ({"shards": [{"name": "../outside.tar", "num_samples": 1, "bytes": 1}]}, "shards[0].name"),
    "shards not a list": ({"shards": "shard-000000.tar"}, "'shards'"),
    "num_samples a string": ({"num_samples": "4"}, "'num_samples'"),
    "shard count negative": ({"shards": [{"name": "shard-000000.tar", "num_samples": -1, "bytes": 1}]}, "shards[0].num_samples"),
    "image_size zero": ({"image_size": [0, 8]}, "'image_size'"),
    "label_names numbers": ({"label_names": [1, 2]}, "'label_names'"),
    "unknown encoding": ({"encoding": "gif"}, "'encoding'"),
    "skipped missing": ({"skipped": None}, "'skipped'"),
}


def _break_index(folder, case):
    change, expected = BAD_INDEXES[case]
    path = folder / "index.json"
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        index = json.loads(path.read_text())
        index.update(change)
        index = {k: v for k, v in index.items() if v is not None}
        path.write_text(json.dumps(index))
    return path, expected


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_bad_index_names_the_file_and_field(shards, case):
    path, expected = _break_index(shards, case)
    _raises_naming(lambda: read_shard_index(shards), path, expected)
    _raises_naming(lambda: ShardDataset(shards), path, expected)
    _raises_naming(lambda: ShardDataset(str(shards / "shard-{000000..000001}.tar")), path, expected)


@pytest.mark.parametrize("case", ["a list", "not UTF-8", "skipped missing"])
def test_resumed_write_with_a_bad_index(shards, tmp_path, case):
    path, expected = _break_index(shards, case)
    dataset = CXRDataset([{"image": tmp_path / "src" / "0.png"}])
    _raises_naming(lambda: write_shards(dataset, shards), path, expected)


@pytest.mark.parametrize("case", ["a list", "not UTF-8", "num_samples a string", "skipped missing"])
def test_shards_info_reports_a_bad_index(shards, case, capsys):
    path, expected = _break_index(shards, case)
    assert main(["shards", "info", str(shards.parent)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err


def test_listed_shard_missing(shards):
    (shards / "shard-000001.tar").unlink()
    _raises_naming(lambda: ShardDataset(shards), shards / "index.json", "shard-000001.tar", "missing")


# ------------------------------------------------------------------------------ sources, patterns


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises_naming(lambda: ShardDataset(tmp_path / "empty"), tmp_path / "empty" / "index.json", "not found")


def test_pattern_matching_no_shard(tmp_path):
    pattern = str(tmp_path / "nothing-{000000..000003}.tar")
    _raises_naming(lambda: ShardDataset(pattern), pattern, "no shard found")
    _raises_naming(lambda: ShardDataset(tmp_path / "absent"), tmp_path / "absent", "no shard found")


def test_pattern_with_a_missing_shard(shards):
    pattern = str(shards / "shard-{000000..000002}.tar")
    _raises_naming(lambda: ShardDataset(pattern), shards / "shard-000002.tar", "1 of the 3")


def test_unbalanced_pattern(shards):
    pattern = str(shards / "shard-{000000..000001.tar")
    _raises_naming(lambda: ShardDataset(pattern), pattern, "not a valid shard pattern")


def test_huge_pattern_is_refused_before_expanding(tmp_path, monkeypatch):
    import braceexpand

    def never(*args, **kwargs):
        raise AssertionError("the pattern was expanded")

    monkeypatch.setattr(braceexpand, "braceexpand", never)  # braceexpand would build 10^15 names
    pattern = str(tmp_path / "shard-{000000000..999999999}-{a,b{0..99999}}.tar")
    _raises_naming(lambda: ShardDataset(pattern), pattern, "more than 100000")


def test_write_into_a_file_path(tmp_path):
    (tmp_path / "taken").write_text("x")
    _raises_naming(lambda: write_shards(CXRDataset([]), tmp_path / "taken"), tmp_path / "taken")


def test_decode_image_names_its_source():
    _raises_naming(lambda: decode_image(b"garbage", "some.tar: sample 7"), "some.tar: sample 7", "not a readable image")
