"""``cxrfm shards write|info`` and the dataset registry behind it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrfm.cli.main import main
from cxrfm.data import ADAPTERS, DatasetSpec, ImageFolderDataset, ShardDataset, build_dataset
from cxrfm.errors import ConfigError


@pytest.fixture
def folder(tmp_path, write_gray, make_ramp):
    root = tmp_path / "data"
    for number in range(3):
        write_gray(root / "train" / f"t{number}.png", make_ramp(12, 9, number))
    write_gray(root / "val" / "v0.png", make_ramp(12, 9, 7))
    write_gray(tmp_path / "masks" / "t1.png", np.full((12, 9), 255, dtype=np.uint8))
    return root


def test_write_one_shard_folder_per_split_then_info(folder, tmp_path, capsys):
    out = tmp_path / "shards"
    argv = ["shards", "write", "--dataset", "folder", "--root", str(folder), "--out", str(out), "--size", "8", "8"]
    argv += ["--max-samples-per-shard", "2", "--option", f"mask_root={tmp_path / 'masks'}", "--check"]
    assert main(argv) == 0
    train, val = ShardDataset(out / "train"), ShardDataset(out / "val")
    assert train.num_samples == 3 and val.num_samples == 1 and len(train.urls) == 2
    samples = list(train)
    assert all(s.image.shape == (1, 8, 8) for s in samples)
    assert [s.lung_mask is not None for s in samples] == [False, True, False]
    capsys.readouterr()
    assert main(["shards", "info", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[str(out / "train")]["samples"] == 3 and summary[str(out / "val")]["image_size"] == [8, 8]


def test_check_stops_before_writing_when_an_image_is_unreadable(folder, tmp_path):
    (folder / "train" / "t2.png").write_bytes(b"broken")
    out = tmp_path / "shards"
    argv = ["shards", "write", "--dataset", "folder", "--root", str(folder), "--out", str(out), "--size", "8", "8"]
    assert main([*argv, "--check"]) == 2 and not out.exists()
    assert main([*argv, "--skip-unreadable"]) == 0
    assert json.loads((out / "train" / "index.json").read_text())["num_samples"] == 2


def test_bad_dataset_folder_is_reported_without_traceback(tmp_path):
    argv = ["shards", "write", "--dataset", "openist", "--root", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2  # DatasetError naming manifest.csv, logged by the CLI


def test_registry_knows_every_cli_choice(folder):
    from cxrfm.cli.shards import DATASET_KINDS

    assert set(DATASET_KINDS) == set(ADAPTERS)
    dataset = build_dataset(DatasetSpec(kind="Folder", root=str(folder)), "val", image_size=[4, 4])
    assert isinstance(dataset, ImageFolderDataset) and len(dataset) == 1 and dataset[0].image.shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="unknown dataset kind 'padchest'.*folder"):
        build_dataset({"kind": "padchest", "root": str(folder)})


def test_rsna_boxes_in_shards_follow_the_resize(tmp_path, write_dicom, make_ramp):
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\nabc,2.0,4.0,6.0,8.0,1\n")
    write_dicom(root / "stage_2_train_images" / "abc.dcm", make_ramp(10, 20, dtype=np.uint16))
    out = tmp_path / "shards"
    assert main(["shards", "write", "--dataset", "rsna", "--root", str(root), "--out", str(out), "--size", "20", "20"]) == 0
    (split_folder,) = [p for p in out.iterdir() if p.is_dir()]
    (sample,) = list(ShardDataset(split_folder))
    assert sample.meta["boxes"] == [[2.0, 4.0, 6.0, 8.0]]
    assert sample.meta["boxes_resized"] == [[2.0, 9.0, 6.0, 8.0]]  # 10x20 centred in 20x20: 5 rows on top
