"""Training tests use tiny models: one thread is as fast, and far faster when cores are shared."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Runs after the root conftest's fixture (which allows 2): with two threads on two busy cores,
    # OpenMP spinning made the tiny-model runs here ~10x slower than with one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
