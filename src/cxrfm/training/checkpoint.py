"""Crash-safe training checkpoints.

Layout of ``<output_dir>/checkpoints``::

    step_0000100/   model.safetensors  config.json  train_state.pt
    step_0000200/   ...
    latest          text file holding "step_0000200"

A checkpoint is written into a hidden temporary folder, flushed to disk, and only then renamed to
``step_XXXXXXX`` (a rename is atomic on POSIX file systems); the ``latest`` pointer is replaced the
same way afterwards. A crash at any moment therefore leaves either the previous checkpoint or the
new one as ``latest``, never a half-written one. ``train_state.pt`` holds only tensors and plain
Python values so it loads with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from cxrfm.config import to_dict
from cxrfm.errors import CheckpointError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
_STEP_PATTERN = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` / EMA wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE))


def save_model_files(model: nn.Module, directory: Path) -> None:
    """``config.json`` + ``model.safetensors`` (the model's own ``save_pretrained`` when it has one)."""
    model = unwrap_model(model)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / MODEL_FILE).is_file():
            raise CheckpointError(directory, f"{type(model).__name__}.save_pretrained did not write {CONFIG_FILE} + {MODEL_FILE}")
        return
    save_model(model, str(directory / MODEL_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(_model_config_dict(model), indent=2), encoding="utf-8")


def _model_config_dict(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return {"model_class": type(model).__name__, **to_dict(config)}
    return {"model_class": type(model).__name__}


def _fsync_tree(directory: Path) -> None:
    """Flush every file and the folder itself, so a rename never exposes unwritten data."""
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    checkpoints_dir: str | Path,
    step: int,
    model: nn.Module,
    train_state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Atomically write ``checkpoints_dir/step_XXXXXXX``, point ``latest`` at it, keep the last ``keep``."""
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(checkpoints_dir)
    name = checkpoint_name(step)
    final = checkpoints_dir / name
    temporary = checkpoints_dir / f".tmp-{name}-{os.getpid()}"
    temporary.mkdir()
    save_model_files(model, temporary)
    torch.save(train_state, temporary / STATE_FILE)
    _fsync_tree(temporary)
    if final.exists():  # the same step saved again: move the old copy aside, then swap
        retired = checkpoints_dir / f".tmp-retired-{name}-{os.getpid()}"
        os.replace(final, retired)
        os.replace(temporary, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(temporary, final)
    _write_latest(checkpoints_dir, name)
    if keep is not None:
        prune_checkpoints(checkpoints_dir, keep)
    log.info("saved checkpoint %s", final)
    return final


def _write_latest(checkpoints_dir: Path, name: str) -> None:
    pointer = checkpoints_dir / LATEST_FILE
    temporary = checkpoints_dir / f".{LATEST_FILE}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, pointer)
    _fsync_dir(checkpoints_dir)


def _remove_stale_temporaries(checkpoints_dir: Path) -> None:
    for path in checkpoints_dir.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        match = _STEP_PATTERN.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(checkpoints_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
    if keep <= 0:
        return
    latest = latest_checkpoint(checkpoints_dir)
    for _, path in list_checkpoints(checkpoints_dir)[:-keep]:
        if latest is None or path.resolve() != latest.resolve():
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names; the newest complete one if the pointer is missing or stale."""
    checkpoints_dir = Path(checkpoints_dir)
    pointer = checkpoints_dir / LATEST_FILE
    if pointer.is_file():
        candidate = checkpoints_dir / pointer.read_text(encoding="utf-8").strip()
        if candidate.is_dir() and is_complete(candidate):
            return candidate
        log.warning("%s names %s, which is missing or incomplete; using the newest complete one", pointer, candidate)
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def load_model_weights(model: nn.Module, checkpoint_dir: str | Path) -> None:
    """Load ``model.safetensors`` into ``model`` (strict: names and shapes must match)."""
    path = Path(checkpoint_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(checkpoint_dir, f"{MODEL_FILE} is missing")
    try:
        load_model(unwrap_model(model), str(path), strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(path, f"does not match {type(unwrap_model(model)).__name__}: {exc}") from None


def load_train_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``train_state.pt`` loaded with ``weights_only=True`` onto the CPU."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(checkpoint_dir, f"{STATE_FILE} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise CheckpointError(path, f"cannot be loaded ({type(exc).__name__}: {exc})") from None
