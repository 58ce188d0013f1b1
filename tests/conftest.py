"""Shared fixtures. Real data lives in ../shared/data beside the repository (read-only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("CXRFM_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data``; tests that need it are skipped where it is absent."""
    path = _shared_data_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _small_torch_threads():
    # Two cores on CI: keep per-test thread pools small so parallel helpers do not oversubscribe.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
