"""Reading and writing ``config.json`` + ``model.safetensors`` folders (no pickles).

``config.json`` holds ``{"model_type": ..., **config fields}``; the weights are a flat safetensors
state dict. Non-persistent buffers (fixed sin-cos position embeddings) are not stored: they are
regenerated from the config, which is what lets a checkpoint load at another image size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cxrfm.config import from_dict, to_dict
from cxrfm.errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

ConfigT = TypeVar("ConfigT")


def write_pretrained(directory: str | Path, model_type: str, config, model: torch.nn.Module) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"model_type": model_type, **to_dict(config)}
    (directory / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    # safetensors refuses views of shared storage; contiguous copies of our tensors are cheap.
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"model_type": model_type})
    return directory


def read_config_record(directory: str | Path) -> dict:
    """The raw ``config.json`` mapping, including ``model_type``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(directory, f"no {CONFIG_NAME} (is this a save_pretrained folder?)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON: {exc}") from None
    if not isinstance(record, dict) or "model_type" not in record:
        raise CheckpointError(path, "expected a mapping with a 'model_type' key")
    return record


def config_from_record(config_cls: type[ConfigT], fields: dict, directory: str | Path) -> ConfigT:
    """Strictly build ``config_cls`` from config.json fields, as a :class:`CheckpointError`."""
    try:
        return from_dict(config_cls, fields, source=Path(directory) / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(directory, str(exc)) from None


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in ``model.safetensors``."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(directory, f"no {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(path, f"cannot read weights: {exc}") from None


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Load ``state`` strictly; missing, unexpected or mis-shaped tensors raise CheckpointError."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{name} {tuple(state[name].shape)} != {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    )
    problems = []
    if missing:
        problems.append(f"missing {_first_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first_few(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch {_first_few(wrong_shape)}")
    if problems:
        raise CheckpointError(directory, "weights do not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _first_few(names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
