"""Crash-safe checkpoint writing, pruning and loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrfm.errors import CheckpointError
from cxrfm.training import checkpoint as ckpt


def _model(value: float) -> nn.Module:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    return model


def test_save_then_load_round_trip_with_weights_only_state(tmp_path):
    state = {"step": 7, "rng": torch.get_rng_state(), "nested": {"lr": [0.1, 0.2], "name": "x", "none": None}}
    path = ckpt.save_checkpoint(tmp_path, 7, _model(1.5), state)
    assert path.name == "step_0000007" and ckpt.is_complete(path)
    assert (tmp_path / "latest").read_text().strip() == "step_0000007"
    target = _model(0.0)
    ckpt.load_model_weights(target, path)
    assert torch.equal(target.weight, torch.full((2, 3), 1.5))
    loaded = ckpt.load_train_state(path)
    assert loaded["step"] == 7 and loaded["nested"]["lr"] == [0.1, 0.2] and loaded["nested"]["none"] is None


def test_a_crash_while_writing_leaves_the_previous_latest_valid(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, _model(1.0), {"step": 1})

    def dying_save(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:  # half a file, then the process "dies"
            handle.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, _model(2.0), {"step": 2})
    monkeypatch.undo()

    assert not (tmp_path / "step_0000002").exists()
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_0000001"
    assert ckpt.load_train_state(latest)["step"] == 1
    target = _model(0.0)
    ckpt.load_model_weights(target, latest)
    assert torch.equal(target.weight, torch.full((2, 3), 1.0))
    # The next save clears the abandoned temporary folder.
    ckpt.save_checkpoint(tmp_path, 3, _model(3.0), {"step": 3})
    assert not list(tmp_path.glob(".tmp-*"))
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000003"


def test_stale_pointer_falls_back_to_newest_complete_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _model(1.0), {"step": 1})
    ckpt.save_checkpoint(tmp_path, 2, _model(2.0), {"step": 2})
    (tmp_path / "latest").write_text("step_0000009\n")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000002"


def test_keep_last_k(tmp_path):
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, _model(float(step)), {"step": step}, keep=2)
    assert [path.name for _, path in ckpt.list_checkpoints(tmp_path)] == ["step_0000004", "step_0000005"]


def test_mismatched_or_corrupt_checkpoints_raise_checkpoint_error(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _model(1.0), {"step": 1})
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt.load_model_weights(nn.Linear(4, 2), path)
    (path / ckpt.STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="train_state.pt"):
        ckpt.load_train_state(path)
