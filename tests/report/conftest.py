"""Fixtures of the report tests: one tiny trained run shared by several of them."""

from __future__ import annotations

import pytest
import torch

from _report_configs import tiny_report_config


@pytest.fixture(scope="session")
def trained_report_run(tmp_path_factory):
    """One tiny English phantom run (test split scored), reused by several tests."""
    from cxrfm.recipes.report import run_report_training

    previous = torch.get_num_threads()
    try:
        return run_report_training(tiny_report_config(tmp_path_factory.mktemp("report") / "run"))
    finally:
        torch.set_num_threads(previous)
