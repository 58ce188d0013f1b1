"""The one device resolver, the one batch-to-device helper and the one atomic folder swap."""

from __future__ import annotations

import os

import pytest
import torch

from cxrfm.errors import ConfigError
from cxrfm.utils.files import replace_folder, write_text_atomic
from cxrfm.utils.runtime import move_to_device, resolve_device, unwrap_model


def test_device_strings_resolve_or_fail_naming_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        resolve_device("cuda")


def test_cuda_indices_are_kept_and_bare_cuda_takes_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch.device needs no GPU to exist
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("auto", local_rank=2) == torch.device("cuda:2")


def test_batches_move_whole_however_they_nest():
    class Batch:
        def __init__(self):
            self.moved_to = None

        def to(self, device, non_blocking=False):
            self.moved_to = device
            return self

    batch = {"images": torch.zeros(2), "parts": [torch.ones(1), (Batch(), "text")], "id": 3}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["id"] == 3 and moved["parts"][1][1] == "text"
    assert moved["parts"][1][0].moved_to == torch.device("cpu") and isinstance(moved["parts"][1], tuple)


def test_unwrap_model_finds_the_module_inside_wrappers():
    class DataParallelLike(torch.nn.Module):  # DDP and EMA keep the model as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    class CompiledLike(torch.nn.Module):  # torch.compile keeps it as ._orig_mod
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

    inner = torch.nn.Linear(2, 2)
    assert unwrap_model(CompiledLike(DataParallelLike(inner))) is inner
    assert unwrap_model(inner) is inner


def test_replace_folder_swaps_a_flushed_folder_in_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    target = tmp_path / "best"
    replace_folder(target, lambda folder: (folder / "weights").write_text("one"))
    assert (target / "weights").read_text() == "one" and synced  # files and folders were flushed

    def broken(folder):
        (folder / "weights").write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        replace_folder(target, broken)
    assert (target / "weights").read_text() == "one"  # the previous folder survives
    replace_folder(target, lambda folder: (folder / "weights").write_text("two"))
    assert (target / "weights").read_text() == "two"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best"]  # no temporaries left


def test_write_text_atomic_replaces_a_file(tmp_path):
    path = write_text_atomic(tmp_path / "latest", "step_1\n")
    write_text_atomic(path, "step_2\n")
    assert path.read_text() == "step_2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
