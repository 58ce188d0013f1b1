"""Subprocess runs: torchrun with 2 CPU processes (gloo) and SIGKILL + resume.

Both launch ``toy_run.py`` (a tiny deterministic run) as separate processes, exactly as a user
would run training, so they also cover process-group set-up and checkpoint files on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrfm.training.checkpoint import latest_checkpoint

SCRIPT = Path(__file__).with_name("toy_run.py")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _run(args: list[str], timeout: float = 120) -> None:
    result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _losses(output_dir: Path) -> list[float]:
    return [record["loss"] for record in json.loads((output_dir / "history.json").read_text())]


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(output_dir / "checkpoints") / "model.safetensors"))


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    common = ["--max-steps", "10", "--batch-size", "8"]
    _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), *common])
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path / "two"), *common],
    )
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert sum(one[-3:]) < sum(one[:3])  # it actually trains
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    weights_one, weights_two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-5, atol=1e-6)


def test_two_processes_mask_and_train_the_mae_like_one_process(tmp_path):
    # Context-aware masking and crop augmentation are keyed per sample, so the ranks' halves of
    # each global batch are masked exactly as in the single process.
    common = ["--mae", "--max-steps", "4", "--batch-size", "8", "--lr", "1e-3"]
    _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), *common])
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path / "two"), *common],
    )
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    for record_one, record_two in zip(one, two, strict=True):
        for name in ("loss", "mask_ratio_inside", "mask_ratio_outside", "region_fraction"):
            assert record_two[name] == pytest.approx(record_one[name], rel=1e-5, abs=1e-6), name
    weights_one, weights_two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in weights_one:
        # Adam divides by sqrt(v): summation-order noise in near-zero gradients shows up as ~1e-5.
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-3, atol=1e-4)


def test_sigkill_mid_training_then_resume_matches_uninterrupted_run(tmp_path):
    common = ["--max-steps", "24", "--checkpoint-every", "4", "--dropout", "0.3"]
    _run([sys.executable, str(SCRIPT), str(tmp_path / "clean"), *common])

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(crashed), *common, "--sleep", "0.1"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = crashed / "checkpoints" / "latest"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if pointer.is_file() and pointer.read_text().strip() >= "step_0000008":
                break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint at step 8 within 60 s")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = latest_checkpoint(crashed / "checkpoints").name
    assert killed_at < "step_0000024"

    _run([sys.executable, str(SCRIPT), str(crashed), *common, "--resume"])
    expected, got = _weights(tmp_path / "clean"), _weights(crashed)
    assert latest_checkpoint(crashed / "checkpoints").name == "step_0000024"
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resuming from {killed_at}"
