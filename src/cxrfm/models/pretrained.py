"""Reading and writing ``config.json`` + ``model.safetensors`` folders (no pickles).

``config.json`` holds ``{"model_type": ..., **config fields}``; the weights are a flat safetensors
state dict. Non-persistent buffers (fixed sin-cos position embeddings) are not stored: they are
regenerated from the config, which is what lets a checkpoint load at another image size.

Loading never lets a library exception out: an unreadable, malformed or mismatched folder is a
:class:`CheckpointError` naming the file (and the field). :func:`build_and_load` first builds the
model on the ``meta`` device, so a config that cannot be built, or whose tensors do not match the
weights, fails before any memory is allocated for it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cxrfm.config import from_dict, to_dict
from cxrfm.errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_JSON_BYTES = 16 * 1024 * 1024  # config.json / tokenizer.json are KBs to a few MB

ConfigT = TypeVar("ConfigT")
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

# What building a model from a bad (but type-correct) config can raise: negative or absurd sizes
# (RuntimeError, MemoryError, OverflowError), divisibility (ValueError, ZeroDivisionError) ...
BUILD_ERRORS = (RuntimeError, MemoryError, OverflowError, ValueError, TypeError, ZeroDivisionError, IndexError)


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


def read_json_object(path: str | Path, what: str = "a JSON object") -> dict:
    """The JSON object in file ``path``; unreadable, non-UTF-8, non-JSON or non-object -> CheckpointError."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_JSON_BYTES:
        raise CheckpointError(path, f"is larger than {MAX_JSON_BYTES} bytes; expected {what}")
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(path, f"not valid JSON: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckpointError(path, "not valid JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise CheckpointError(path, f"expected {what}, got a JSON {type(record).__name__}")
    return record


def read_config_record(directory: str | Path) -> dict:
    """The raw ``config.json`` mapping, including ``model_type``."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(directory, f"does not exist (expected a folder with {CONFIG_NAME} + {WEIGHTS_NAME})")
    if not directory.is_dir():
        raise CheckpointError(directory, f"is a file, not a folder with {CONFIG_NAME} + {WEIGHTS_NAME}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(directory, f"no {CONFIG_NAME} (is this a save_pretrained folder?)")
    record = read_json_object(path, "a mapping with a 'model_type' key")
    if "model_type" not in record:
        raise CheckpointError(path, "expected a mapping with a 'model_type' key")
    if not isinstance(record["model_type"], str):
        raise CheckpointError(path, f"field 'model_type' must be a string, got {record['model_type']!r}")
    return record


def config_from_record(config_cls: type[ConfigT], fields: Any, directory: str | Path, prefix: str = "") -> ConfigT:
    """Strictly build ``config_cls`` from config.json fields, as a :class:`CheckpointError`.

    ``prefix`` is where ``fields`` sit in the file (``"encoder"`` for an MAE's encoder).
    """
    path = Path(directory) / CONFIG_NAME
    try:
        return from_dict(config_cls, fields, source=path, prefix=prefix)
    except ConfigError as exc:
        if exc.source is None:  # raised by a __post_init__, which does not know the file
            exc = ConfigError(exc.field, exc.reason, path)
        raise CheckpointError(directory, str(exc)) from None
    except BUILD_ERRORS as exc:  # a __post_init__ tripping over a value the type check let through
        raise CheckpointError(directory, str(ConfigError(prefix or config_cls.__name__, str(exc), path))) from None


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in ``model.safetensors`` (read by safetensors only: never a pickle)."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(directory, f"no {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"cannot read weights: {exc}") from None


def check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: str | Path, record: dict | None = None) -> None:
    """Raise CheckpointError for missing, unexpected or mis-shaped tensors (``model`` may be on ``meta``).

    ``record`` (the config.json fields the model was built from) lets the message name the fields
    config.json lacks, whose defaults may be why the shapes differ.
    """
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
        absent = _absent_fields(getattr(model, "config", None), record)
        if absent:
            problems.append(f"{CONFIG_NAME} lacks {_first_few(absent)} (defaults were used)")
        raise CheckpointError(Path(directory) / WEIGHTS_NAME, "weights do not match the model: " + "; ".join(problems))


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: str | Path, record: dict | None = None) -> None:
    """Load ``state`` strictly; missing, unexpected or mis-shaped tensors raise CheckpointError."""
    check_weights(model, state, directory, record)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. a dtype that cannot be copied
        raise CheckpointError(Path(directory) / WEIGHTS_NAME, f"cannot be loaded into {type(model).__name__}: {exc}") from None


def build_model(directory: str | Path, factory: Callable[[], ModelT], device: str | torch.device | None = None) -> ModelT:
    """``factory()`` (on ``device``, e.g. ``"meta"``), any failure a CheckpointError naming config.json."""
    try:
        if device is None:
            return factory()
        with torch.device(device):
            return factory()
    except CheckpointError:
        raise
    except (ConfigError, *BUILD_ERRORS) as exc:
        raise CheckpointError(
            Path(directory) / CONFIG_NAME, f"describes a model that cannot be built ({type(exc).__name__}: {exc})"
        ) from None


def build_and_load(
    directory: str | Path, factory: Callable[[], ModelT], state: dict[str, torch.Tensor], record: dict | None = None
) -> ModelT:
    """Build the model of a checkpoint folder and load its weights, failing before any allocation.

    The model is built on the ``meta`` device first (no memory) and its tensor names and shapes
    are compared with ``state``; only a model that fits its weights is then built for real.
    """
    check_weights(build_model(directory, factory, "meta"), state, directory, record)
    model = build_model(directory, factory)
    load_weights(model, state, directory, record)
    return model


def load_pretrained(directory: str | Path, model_type: str, config_cls: type[ConfigT], build: Callable[[ConfigT], ModelT]) -> ModelT:
    """The ``from_pretrained`` of a :func:`write_pretrained` folder: ``config.json`` must name
    ``model_type``; its fields become a ``config_cls``; ``build(config)`` makes the model, which gets the
    folder's weights (:func:`build_and_load`). A bad folder is a CheckpointError naming the file."""
    record = read_config_record(directory)
    found = record.pop("model_type")
    if found != model_type:
        raise CheckpointError(directory, f"model_type {found!r} is not a {model_type} checkpoint")
    config = config_from_record(config_cls, record, directory)
    return build_and_load(directory, lambda: build(config), read_weights(directory), record)


def _absent_fields(config: Any, record: Any, prefix: str = "") -> list[str]:
    """Dotted names of ``config``'s dataclass fields that ``record`` does not hold."""
    if record is None or not dataclasses.is_dataclass(config) or not isinstance(record, dict):
        return []
    absent = []
    for field in dataclasses.fields(config):
        name = prefix + field.name
        if field.name not in record:
            absent.append(name)
        else:
            absent += _absent_fields(getattr(config, field.name), record[field.name], name + ".")
    return absent


def _first_few(names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
