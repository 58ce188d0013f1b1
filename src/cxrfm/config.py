"""Strict YAML run configs over dataclasses.

A run config is a tree of dataclasses. ``load_config(RunConfig, "run.yaml", ["train.lr=1e-4"])``
reads the YAML, applies ``--set`` style overrides (dotted key = YAML value), and builds the
dataclasses. Unknown keys, wrong types and malformed overrides raise :class:`ConfigError` naming the
field, so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxrfm.errors import ConfigError

T = TypeVar("T")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(text, "override must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "override key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"override value {raw!r} is not valid YAML ({exc})") from None
    # YAML 1.1 reads "1e-4" as a string; users mean a float.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of ``data`` with each ``key.sub=value`` override set (creating sub-dicts)."""
    data = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(keys[: depth + 1]), "is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def from_dict(cls: type[T], data: dict | None, source: str | Path | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, recursively and strictly."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", f"expected a mapping, got {type(data).__name__}", source)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            where + unknown[0],
            f"unknown key (known keys: {', '.join(sorted(fields))})",
            source,
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        field_path = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, field_path, source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix or cls.__name__, str(exc), source) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("<file>", "config file not found", path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError("<file>", f"not valid YAML: {exc}", path) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("<root>", "the top level must be a mapping", path)
        data = loaded or {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=path)


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-safe Python (tuples become lists, Paths strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the record of what a run actually used)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _coerce(hint: Any, value: Any, field_path: str, source) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, field_path, source)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(field_path, "; ".join(errors) or f"cannot be {value!r}", source)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(field_path, f"must be one of {list(args)}, got {value!r}", source)
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, field_path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field_path, f"expected a list, got {value!r}", source)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(field_path, f"expected {len(args)} items, got {len(value)}", source)
            return tuple(_coerce(a, v, f"{field_path}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{field_path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(field_path, f"expected a mapping, got {value!r}", source)
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(field_path, f"expected true/false, got {value!r}", source)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(field_path, f"expected an integer, got {value!r}", source)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field_path, f"expected a number, got {value!r}", source)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(field_path, f"expected a string, got {value!r}", source)
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(field_path, f"expected a path string, got {value!r}", source)
        return Path(value)
    return value
