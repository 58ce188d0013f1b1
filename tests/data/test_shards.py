"""WebDataset shards: round trip, size limits, resuming, node/worker splitting, shuffling."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxrfm.data import CXRDataset, ShardDataset, collate_samples, read_shard_index, write_shards
from cxrfm.errors import DatasetError, ImageReadError

LABELS = ("Pneumonia", "Effusion", "Nodule")


@pytest.fixture
def source(tmp_path, write_gray):
    """Five 16-bit 10x12 images with masks, labels (incl. -1 and NaN), reports and a second view."""
    rng = np.random.default_rng(0)
    records = []
    for number in range(5):
        image = write_gray(tmp_path / "src" / f"{number}.png", rng.integers(0, 65536, (10, 12), dtype=np.uint16))
        view = write_gray(tmp_path / "src" / f"{number}_lat.png", rng.integers(0, 65536, (10, 12), dtype=np.uint16))
        mask = write_gray(tmp_path / "src" / f"{number}_mask.png", (rng.random((10, 12)) > 0.5).astype(np.uint8) * 255)
        records.append(
            {
                "image": image,
                "extra_images": [view],
                "mask": mask if number != 2 else None,
                "labels": {"Pneumonia": float(number % 2), "Effusion": -1.0},
                "findings": f"Findings {number}: heart size normal ✓." if number != 3 else None,
                "impression": "No acute disease." if number % 2 else None,
                "split": "train" if number < 4 else "val",
                "meta": {"view": "PA", "patient_id": f"p{number}", "extra": {"nested": [1, 2]}},
            }
        )
    return CXRDataset(records, label_names=LABELS, source="fixture")


def _strip(meta):
    return {k: v for k, v in meta.items() if k not in ("shard_key", "extra_images")}


def test_round_trip_is_exact_within_16_bit_quantisation(source, tmp_path):
    index = write_shards(source, tmp_path / "shards", max_samples_per_shard=2)
    assert index["complete"] and index["num_samples"] == 5 and [s["num_samples"] for s in index["shards"]] == [2, 2, 1]
    assert index["label_names"] == list(LABELS) and index["splits"] == {"train": 4, "val": 1}
    assert read_shard_index(tmp_path / "shards")["encoding"] == "png16"
    shards = ShardDataset(tmp_path / "shards")
    assert shards.label_names == LABELS and shards.num_samples == 5
    read_back = list(shards)
    assert len(read_back) == 5
    for original, copy in zip((source[i] for i in range(5)), read_back):
        assert (copy.image - original.image).abs().max() <= 0.5 / 65535 + 1e-7
        assert (copy.meta["extra_images"][0] - original.meta["extra_images"][0]).abs().max() <= 0.5 / 65535 + 1e-7
        if original.lung_mask is None:
            assert copy.lung_mask is None
        else:
            assert torch.equal(copy.lung_mask, original.lung_mask)
        torch.testing.assert_close(copy.labels, original.labels, rtol=0, atol=0, equal_nan=True)
        assert (copy.findings, copy.impression) == (original.findings, original.impression)
        assert _strip(copy.meta) == _strip(original.meta)
    batch = collate_samples(read_back)
    assert batch.images.shape == (5, 1, 10, 12) and batch.has_lung_mask.tolist() == [True, True, False, True, True]


@pytest.mark.parametrize(("encoding", "tolerance"), [("png8", 0.5 / 255 + 1e-7), ("jpeg", 0.25)])
def test_eight_bit_encodings(source, tmp_path, encoding, tolerance):
    write_shards(source, tmp_path / encoding, encoding=encoding)
    copy = next(iter(ShardDataset(tmp_path / encoding)))
    assert (copy.image - source[0].image).abs().max() <= tolerance
    assert torch.equal(copy.lung_mask, source[0].lung_mask)


def test_resize_on_write_and_byte_limit(source, tmp_path):
    index = write_shards(source, tmp_path / "out", (16, 16), max_shard_bytes=1, indices=[4, 0])
    assert [s["num_samples"] for s in index["shards"]] == [1, 1]  # every sample gets its own shard
    samples = list(ShardDataset(tmp_path / "out"))
    assert [s.meta["index"] for s in samples] == [4, 0]
    assert samples[0].image.shape == (1, 16, 16) and samples[1].lung_mask.shape == (1, 16, 16)
    # 10x12 scaled by 4/3 to 13x16 and centred in 16x16: one black row above, two below
    assert samples[0].image[0, :1].sum() == 0 and samples[0].image[0, -2:].sum() == 0
    assert samples[0].image[0, 1:14].sum() > 0
    members = tarfile.open(tmp_path / "out" / index["shards"][0]["name"]).getnames()
    assert members == [
        "000000004.image.png",
        "000000004.view1.png",
        "000000004.mask.png",
        "000000004.labels.npy",
        "000000004.findings.txt",  # item 4 has no impression: no member for it
        "000000004.meta.json",
    ]


class _Interrupted(Exception):
    pass


def test_interrupted_write_resumes_after_the_last_finished_shard(source, tmp_path):
    out = tmp_path / "out"
    loaded, interrupt_at = [], {"index": 3}
    original_load = source.load

    def load(index):
        loaded.append(index)
        if index == interrupt_at["index"]:
            raise _Interrupted  # e.g. the job was killed while writing the second shard
        return original_load(index)

    source.load = load
    with pytest.raises(_Interrupted):
        write_shards(source, out, max_samples_per_shard=2)
    partial = json.loads((out / "index.json").read_text())
    assert not partial["complete"] and [s["name"] for s in partial["shards"]] == ["shard-000000.tar"]
    assert (out / "shard-000001.tar.tmp").exists()  # the unfinished shard never looks finished
    with pytest.raises(DatasetError, match="did not finish"):
        ShardDataset(out)
    loaded.clear()
    interrupt_at["index"] = None
    index = write_shards(source, out, max_samples_per_shard=2)
    assert loaded == [2, 3, 4]  # items of the finished first shard are not read again
    assert index["complete"] and index["num_samples"] == 5 and not list(out.glob("*.tmp"))
    assert [s.meta["index"] for s in ShardDataset(out)] == [0, 1, 2, 3, 4]
    assert write_shards(source, out, max_samples_per_shard=2) == index  # complete: nothing to do
    with pytest.raises(DatasetError, match="different settings"):
        write_shards(source, out, max_samples_per_shard=3)


def test_unreadable_items_are_skipped_and_listed(source, tmp_path):
    (tmp_path / "src" / "1.png").write_bytes(b"broken")
    with pytest.raises(ImageReadError, match="1.png"):
        write_shards(source, tmp_path / "strict")
    index = write_shards(source, tmp_path / "lenient", skip_unreadable=True)
    assert index["num_samples"] == 4 and [s["index"] for s in index["skipped"]] == [1]
    assert index["skipped"][0]["path"].endswith("1.png") and index["splits"] == {"train": 3, "val": 1}


def test_worker_processes_write_identical_shards(source, tmp_path):
    (tmp_path / "src" / "3.png").write_bytes(b"broken")
    serial = write_shards(source, tmp_path / "serial", max_samples_per_shard=2, skip_unreadable=True)
    parallel = write_shards(source, tmp_path / "parallel", max_samples_per_shard=2, skip_unreadable=True, num_workers=2)
    assert [s["name"] for s in parallel["shards"]] == [s["name"] for s in serial["shards"]]
    for shard in serial["shards"]:
        assert (tmp_path / "parallel" / shard["name"]).read_bytes() == (tmp_path / "serial" / shard["name"]).read_bytes()
    assert parallel["skipped"] == serial["skipped"] and [s["index"] for s in serial["skipped"]] == [3]
    with pytest.raises(ImageReadError, match="3.png"):
        write_shards(source, tmp_path / "strict", num_workers=2)


def test_text_only_items_cannot_be_sharded(tmp_path):
    dataset = CXRDataset([{"image": tmp_path / "absent.png", "findings": "x"}], images_required=False)
    with pytest.raises(DatasetError, match="has no image"):
        write_shards(dataset, tmp_path / "out")


@pytest.fixture
def many_shards(source, tmp_path):
    write_shards(source, tmp_path / "many", max_samples_per_shard=1)
    return tmp_path / "many"


def _keys(dataset):
    return [sample.meta["shard_key"] for sample in dataset]


def test_ranks_read_disjoint_shards(many_shards, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(_keys(ShardDataset(many_shards, shuffle=True, seed=3)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"{i:09d}" for i in range(5)]
    assert {len(seen[0]), len(seen[1])} == {2, 3}


def test_shuffle_is_seeded_per_epoch(many_shards):
    dataset = ShardDataset(many_shards, shuffle=True, seed=7, shuffle_buffer=3)
    first = _keys(dataset)
    assert _keys(dataset) == first  # same seed and epoch -> same order
    orders = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        orders.add(tuple(_keys(dataset)))
    assert len(orders) > 1 and all(sorted(order) == sorted(first) for order in orders)
    assert _keys(ShardDataset(many_shards)) == sorted(first)  # unshuffled: written order


def test_dataloader_workers_decode_disjoint_shards(many_shards):
    dataset = ShardDataset(many_shards, shuffle=True, seed=1)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_samples)
    keys = [meta["shard_key"] for batch in loader for meta in batch.meta]
    assert sorted(keys) == [f"{i:09d}" for i in range(5)]


def test_brace_pattern_and_list_sources(many_shards):
    pattern = str(many_shards / "shard-{000000..000004}.tar")
    from_pattern = ShardDataset(pattern)
    assert from_pattern.label_names == LABELS  # index.json beside the shards is found
    assert _keys(from_pattern) == [f"{i:09d}" for i in range(5)]
    assert len(_keys(ShardDataset([many_shards / "shard-000001.tar"]))) == 1
    with pytest.raises(DatasetError, match="shard index not found"):
        ShardDataset(many_shards.parent / "src")
