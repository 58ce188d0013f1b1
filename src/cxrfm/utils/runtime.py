"""Seeding, logging configuration (CLI only), run folders, the device resolver and batch-to-device."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrfm.errors import ConfigError


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


def refuse_file_in_path(path: str | Path, field: str) -> Path:
    """``path`` unless it, or a folder above it, exists as a file (a ConfigError naming ``field``)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise ConfigError(field, f"{candidate} is a file, not a folder")
    return path


def output_folder(path: str | Path, field: str = "--out") -> Path:
    """Create folder ``path`` (and its parents) for a run's outputs, or fail naming ``field``
    before any work starts: an existing file there, or a folder that cannot be created."""
    path = refuse_file_in_path(path, field)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(field, f"cannot create {path}: {exc.strerror or exc}") from None
    return path


def make_run_dir(root: str | Path, name: str | None = None) -> Path:
    """Create ``root/name`` (default: a timestamp) and return it; never overwrites another run."""
    root = output_folder(root)
    name = name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / name
    suffix = 1
    while run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        run_dir = root / f"{name}-{suffix}"  # an earlier run (or a file of that name) stays untouched
        suffix += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0, field: str = "device") -> torch.device:
    """The one device resolver of the toolkit.

    ``"auto"`` -> ``cuda:<local_rank>`` when a GPU is visible, else CPU; ``"cuda"`` ->
    ``cuda:<local_rank>``; ``"cuda:1"``, ``"cpu"``, ``"mps"`` as given. A CUDA device asked for on a
    machine without one, or a string torch does not know, is a :class:`ConfigError` naming
    ``field`` (``train.device``, ``--device``).
    """
    if isinstance(device, torch.device):
        resolved = device
    elif str(device).strip().lower() == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            resolved = torch.device(str(device).strip().lower())
        except (RuntimeError, ValueError):
            raise ConfigError(field, f"{device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(field, f"{device!r} was asked for but no CUDA GPU is visible; use auto or cpu")
        if resolved.index is None:
            resolved = torch.device(f"cuda:{local_rank}")
    return resolved


def move_to_device(batch: Any, device: torch.device) -> Any:
    """The one batch-to-device helper: tensors, objects with ``.to``, and lists/tuples/dicts of them.

    Copies are non-blocking on CUDA (batches come from pinned memory there).
    """
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    return batch


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` / EMA wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
