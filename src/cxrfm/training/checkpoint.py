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

import contextlib
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from cxrfm.config import to_dict
from cxrfm.errors import CheckpointError
from cxrfm.utils.runtime import unwrap_model
from cxrfm.utils.files import TEMPORARY_PREFIX, replace_folder, write_text_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
_STEP_PATTERN = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


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

    def write(folder: Path) -> None:
        save_model_files(model, folder)
        torch.save(train_state, folder / STATE_FILE)

    final = replace_folder(checkpoints_dir / name, write)
    _write_latest(checkpoints_dir, name)
    if keep is not None:
        prune_checkpoints(checkpoints_dir, keep)
    log.info("saved checkpoint %s", final)
    return final


def _write_latest(checkpoints_dir: Path, name: str) -> None:
    write_text_atomic(checkpoints_dir / LATEST_FILE, name + "\n")


def _remove_stale_temporaries(checkpoints_dir: Path) -> None:
    for path in checkpoints_dir.glob(f"{TEMPORARY_PREFIX}*"):
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
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        # The pointer only ever names a sibling step folder; anything else is damage, not a path to follow.
        candidate = checkpoints_dir / name if _STEP_PATTERN.match(name) else None
        if candidate is not None and candidate.is_dir() and is_complete(candidate):
            return candidate
        log.warning("%s names %r, which is missing or incomplete; using the newest complete one", pointer, name[:80])
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def missing_files(directory: str | Path) -> list[str]:
    """The checkpoint files ``directory`` lacks (all of them when it is not a folder)."""
    return [name for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE) if not (Path(directory) / name).is_file()]


def load_model_weights(model: nn.Module, checkpoint_dir: str | Path) -> None:
    """Load ``model.safetensors`` into ``model`` (strict: names and shapes must match; safetensors only)."""
    path = Path(checkpoint_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(checkpoint_dir, f"{MODEL_FILE} is missing")
    try:
        load_model(unwrap_model(model), str(path), strict=True)
    except (SafetensorError, OSError) as exc:  # truncated, empty or not safetensors at all
        raise CheckpointError(path, f"cannot read weights: {exc}") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(path, f"does not match {type(unwrap_model(model)).__name__}: {exc}") from None


def load_train_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``train_state.pt`` loaded with ``weights_only=True`` onto the CPU."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(checkpoint_dir, f"{STATE_FILE} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file, or a pickled class weights_only refuses
        raise CheckpointError(path, f"cannot be loaded ({type(exc).__name__}: {exc})") from None


# What a malformed (but weights_only-loadable) state can raise while it is being restored.
_RESTORE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError)

# What the Trainer reads from train_state.pt: key -> accepted types.
TRAIN_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "epoch": (int,),
    "epoch_offset": (int,),
    "batch_size": (int,),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "scaler": (dict,),
    "ema": (dict, type(None)),
    "rng": (list, tuple),
}


def load_trainer_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """:func:`load_train_state`, checked to hold every key the Trainer resumes from, with its type."""
    state = load_train_state(checkpoint_dir)
    path = Path(checkpoint_dir) / STATE_FILE
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not the mapping of a training state")
    missing = [key for key in TRAIN_STATE_FIELDS if key not in state]
    if missing:
        raise CheckpointError(path, f"lacks {', '.join(repr(key) for key in missing)} (not a cxrfm training state)")
    for key, types in TRAIN_STATE_FIELDS.items():
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CheckpointError(path, f"'{key}' is a {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}")
        if types == (int,) and value < 0:
            raise CheckpointError(path, f"'{key}' is {value}, expected an integer >= 0")
    best = state.get("best")
    if best is not None and not (isinstance(best, dict) and {"step", "metric", "value"} <= set(best)):
        raise CheckpointError(path, f"'best' must be None or a mapping with step, metric and value, got {best!r}"[:300])
    return state


def restore_state(target: Any, saved: Any, key: str, checkpoint_dir: str | Path) -> None:
    """``target.load_state_dict(saved)`` with every failure a CheckpointError naming train_state.pt and ``key``."""
    path = Path(checkpoint_dir) / STATE_FILE
    current = target.state_dict()
    if isinstance(current, dict) and isinstance(saved, dict):
        lacking = sorted(str(name) for name in set(current) - set(saved))
        if lacking:
            raise CheckpointError(path, f"'{key}' lacks {', '.join(lacking[:5])}")
    try:
        target.load_state_dict(saved)
    except _RESTORE_ERRORS as exc:
        raise CheckpointError(path, f"'{key}' does not fit this run ({type(exc).__name__}: {exc})") from None
    if isinstance(target, torch.optim.Optimizer):
        _check_optimizer_shapes(target, key, path)


@contextlib.contextmanager
def restoring(key: str, checkpoint_dir: str | Path) -> Iterator[None]:
    """A context in which a failure to restore ``key`` of train_state.pt is a CheckpointError."""
    try:
        yield
    except _RESTORE_ERRORS as exc:
        raise CheckpointError(Path(checkpoint_dir) / STATE_FILE, f"'{key}' cannot be restored ({type(exc).__name__}: {exc})") from None


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, key: str, path: Path) -> None:
    """Per-parameter optimiser tensors (Adam moments) must have their parameter's shape."""
    for group_index, group in enumerate(optimizer.param_groups):
        for param_index, parameter in enumerate(group["params"]):
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != parameter.shape:
                    raise CheckpointError(
                        path,
                        f"'{key}' state {name!r} of group {group_index} parameter {param_index} is "
                        f"{tuple(value.shape)}, the parameter is {tuple(parameter.shape)}",
                    )
