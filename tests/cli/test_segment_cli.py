"""``cxrfm segment predict|evaluate|train`` end to end on tiny models."""

import numpy as np
import pytest
import torch

from cxrfm.anatomy.segmenter import LungSegmenter, LungSegmenterConfig
from cxrfm.cli.main import main
from cxrfm.io import read_mask, write_image


@pytest.fixture()
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    return LungSegmenter(LungSegmenterConfig(input_size=(32, 32), base_width=4, depth=2)).save_pretrained(
        tmp_path / "weights"
    )


def test_predict_writes_one_mask_per_image_with_the_image_size(tmp_path, tiny_weights):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    write_image(folder / "a.png", np.random.default_rng(0).random((40, 56)))
    write_image(folder / "sub" / "a.png", np.random.default_rng(1).random((30, 30)))  # same stem, other folder
    out = tmp_path / "masks"
    code = main(["segment", "predict", "--weights", str(tiny_weights), "--input", str(folder), "--out", str(out), "--overlays"])
    assert code == 0
    first, second = read_mask(out / "a.png"), read_mask(out / "sub" / "a.png")
    assert first.shape == (40, 56) and second.shape == (30, 30)
    assert set(np.unique(first)) <= {0.0, 1.0}
    assert (out / "overlays" / "a.png").is_file() and (out / "overlays" / "sub" / "a.png").is_file()


def test_predict_with_missing_weights_fails_cleanly(tmp_path, capfd):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", np.zeros((8, 8)))
    code = main(["segment", "predict", "--weights", str(tmp_path / "nope"), "--input", str(folder), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "missing config.json" in capfd.readouterr().err  # the CLI logs to stderr, no traceback


@pytest.mark.realdata
def test_evaluate_prints_a_dice_table(shared_data_dir, tiny_weights, capsys, tmp_path):
    root = shared_data_dir / "lung_seg_openist"
    scores = tmp_path / "scores.json"
    code = main(["segment", "evaluate", "--weights", str(tiny_weights), "--dataset", "openist", "--root", str(root),
                 "--split", "val", "--json", str(scores)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| segmenter on openist/val (raw) | 23 |" in table
    assert scores.is_file()


def test_train_from_the_command_line(tmp_path, monkeypatch):
    pytest.importorskip("cxrfm.data.phantom", reason="phantom generator not available")
    from cxrfm.data import phantom

    if not hasattr(phantom, "PhantomDataset"):
        pytest.skip("PhantomDataset not available")
    code = main(["segment", "train", "--set", f"output_dir={tmp_path}", "--set", "run_name=tiny",
                 "--set", "train.epochs=1", "--set", "data.num_samples={train: 8, val: 8}", "--set", "train.progress=false"])
    assert code == 0
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert LungSegmenter.from_pretrained(tmp_path / "tiny").config.input_size == (64, 64)
