"""Seeding, logging configuration (CLI only) and run folders."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same way.

    Random transforms and maskers take an explicit generator rather than the global state, so a
    run is reproducible even when other code draws random numbers in between.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def configure_logging(level: int | str = logging.INFO, log_file: str | Path | None = None) -> None:
    """Configure the root logger. Only the CLI calls this; library code just uses getLogger."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def make_run_dir(root: str | Path, name: str | None = None) -> Path:
    """Create ``root/name`` (default: a timestamp) and return it; never overwrites another run."""
    root = Path(root)
    name = name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / name
    suffix = 1
    while run_dir.exists() and any(run_dir.iterdir()):
        run_dir = root / f"{name}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def env_int(name: str, default: int) -> int:
    """Read an integer environment variable (e.g. torchrun's RANK) with a default."""
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)
