"""Strict YAML run configs over dataclasses.

A run config is a tree of dataclasses. ``load_config(RunConfig, "run.yaml", ["train.lr=1e-4"])``
reads the YAML, applies ``--set`` style overrides (dotted key = YAML value), and builds the
dataclasses. Unknown keys, wrong types and malformed overrides raise :class:`ConfigError` naming the
field, so a typo in a config never silently falls back to a default.

Files and ``--set`` values are read by one loader (:func:`parse_yaml`), PyYAML's safe loader with
these changes, so a file and an override always read a value the same way:

* ``1e-4``, ``1E-4``, ``5e3`` are floats (YAML 1.2's rule; YAML 1.1 wants a dot and a signed
  exponent, ``1.0e-4``, and reads ``1e-4`` as a string).
* Every mapping key must be a string. YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans and
  ``3`` as an int; such a key is an error naming it (quote it: ``'on':``), as is a duplicate key
  (PyYAML silently keeps the last one).
* Anchors and aliases (``&a`` / ``*a``, ``<<: *a`` merges) are allowed, since sharing a block is
  a legitimate use, but all aliases together may add at most :data:`MAX_ALIAS_NODES` nodes to
  the document. The check runs on the composed node graph, before any Python object is built,
  so an alias bomb ("billion laughs": a few hundred bytes of nested ``&a [*b, *b, ...]`` that
  expand to billions of nodes when the tree is walked) is refused at once instead of taking
  seconds of CPU and gigabytes later on. Recursive aliases are refused too. Rejecting aliases
  outright would be as safe but break configs that share blocks; a bound keeps both.
* A file over :data:`MAX_CONFIG_BYTES`, a file that is not UTF-8, a syntax error (reported with
  its line and column), several documents and nesting too deep to read are ConfigErrors naming
  the file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxrfm.errors import ConfigError

T = TypeVar("T")

MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB); a run config is a few KB."""

MAX_ALIAS_NODES = 10_000
"""Most nodes all aliases of one document may add when expanded (shipped configs use none)."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists read (shipped configs: 4); deeper is refused while parsing."""

OVERRIDE_SOURCE = "--set"
"""The ``source`` named in errors about an override string."""

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML11_BOOL_WORDS = ("on", "off", "yes", "no", "true", "false")


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats, a nesting bound and the checks of :func:`_check_nodes`."""

    def __init__(self, stream):
        self._depth = 0
        self._paths: dict[int, str] = {}
        super().__init__(stream)

    def compose_node(self, parent, index):  # PyYAML's composer recurses per level
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _YAMLStructureError(
                    "<file>", f"nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}, column {mark.column + 1}"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):  # composes, then checks before anything is built
        node = super().get_single_node()
        if node is not None:
            self._paths = _check_nodes(node)
        return node

    def construct_object(self, node, deep=False):  # names the key of a bad value
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. "!!int x", an int of 5000 digits
            raise _YAMLStructureError(self._paths.get(id(node)) or "<root>", f"cannot read the value at {_line(node)}: {exc}") from None


# YAML 1.2 floats that YAML 1.1 misses: an exponent without a sign or without a dot (1e-4, 5e3,
# 1.0e5). Tried after the int rule, so 3 stays an int; 0x1e5 is an int by then too.
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


class _YAMLStructureError(Exception):
    """Raised inside the loader; turned into a ConfigError naming the file by :func:`parse_yaml`."""

    def __init__(self, field: str, reason: str):
        super().__init__(field, reason)
        self.field, self.reason = field, reason


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _key_error(key_node: yaml.Node, path: str) -> _YAMLStructureError:
    """Why a non-string key is refused (YAML 1.1 booleans get a hint to quote them)."""
    if not isinstance(key_node, yaml.ScalarNode):
        return _YAMLStructureError(path or "<root>", f"a {key_node.id} used as a key at {_line(key_node)}; keys must be strings")
    text = key_node.value
    kind = key_node.tag.rsplit(":", 1)[-1]
    where = f"{path}.{text}" if path else text
    if kind == "bool" and text.lower() in _YAML11_BOOL_WORDS:
        return _YAMLStructureError(
            where, f"key {text!r} at {_line(key_node)} is read as a boolean (YAML 1.1); keys must be strings: quote it ('{text}':)"
        )
    return _YAMLStructureError(where, f"key {text!r} at {_line(key_node)} is read as {kind}; keys must be strings: quote it ('{text}':)")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_nodes(root: yaml.Node) -> dict[int, str]:
    """Keys are unique strings; aliases add at most MAX_ALIAS_NODES nodes and form no cycle.

    Iterative (no recursion) and linear in the number of distinct nodes: each node's expanded
    size is computed once from its children's, so a bomb is measured, never expanded. Returns
    the dotted key path of each node (by ``id``), for messages.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    paths: dict[int, str] = {id(root): ""}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _YAMLStructureError(paths.get(key) or "<root>", f"recursive alias at {_line(node)}")
        path = paths.get(key, "")
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    paths.setdefault(id(value_node), path)
                    continue
                if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG):
                    raise _key_error(key_node, path)
                where = f"{path}.{key_node.value}" if path else key_node.value
                if key_node.value in seen:
                    raise _YAMLStructureError(
                        where, f"duplicate key at {_line(key_node)} (first at {_line(seen[key_node.value])})"
                    )
                seen[key_node.value] = key_node
                paths.setdefault(id(value_node), where)
        elif isinstance(node, yaml.SequenceNode):
            for number, item in enumerate(node.value):
                paths.setdefault(id(item), f"{path}.{number}" if path else str(number))
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _YAMLStructureError(paths.get(id(child)) or "<root>", f"recursive alias at {_line(child)}")
            if id(child) not in sizes:
                stack.append((child, False))
    expanded, distinct = sizes[id(root)], len(sizes)
    if expanded - distinct > MAX_ALIAS_NODES:
        raise _YAMLStructureError(
            "<aliases>",
            f"aliases expand {distinct} nodes to {expanded} (more than {MAX_ALIAS_NODES} extra); refused as an alias bomb",
        )
    return paths


def _yaml_error_reason(exc: yaml.YAMLError) -> str:
    """``"... at line L, column C: problem"`` for a PyYAML error (its marks are 0-based)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            where = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            problem += f" ({exc.context} at {where})"
        elif exc.context:
            problem += f" ({exc.context})"
        if mark is not None:
            return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return f"not valid YAML: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not valid YAML: character {exc.character!r} at offset {exc.position} is not allowed"
    return f"not valid YAML: {exc}"


def parse_yaml(text: str, source: str | Path) -> Any:
    """Parse one YAML document with the config loader (see the module docstring).

    Errors are :class:`ConfigError` with ``source`` (a file, or ``--set``) and the offending key.
    """
    loader = None
    try:
        loader = _ConfigLoader(text)
        return loader.get_single_data()
    except _YAMLStructureError as exc:
        raise ConfigError(exc.field, exc.reason, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError("<file>" if source != OVERRIDE_SOURCE else "<value>", _yaml_error_reason(exc), source) from None
    except RecursionError:
        raise ConfigError("<file>", "nested too deeply to read", source) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_config_file(path: str | Path) -> dict:
    """The mapping in YAML file ``path`` ({} when empty); every failure is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("<file>", "is a directory, not a config file", path)
    if not path.is_file():
        raise ConfigError("<file>", "config file not found", path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read ({exc.strerror or exc})", path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("<file>", f"larger than {MAX_CONFIG_BYTES} bytes; a run config is a few KB", path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})", path) from None
    loaded = parse_yaml(text, path)
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError("<root>", f"the top level must be a mapping, got a {type(loaded).__name__}", path)
    return loaded or {}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 1e-4)``; the value is parsed as YAML.

    The value is read exactly as the same text in a config file would be (:func:`parse_yaml`).
    """
    if not isinstance(text, str):
        raise ConfigError(repr(text), "override must be a 'key.sub=value' string", OVERRIDE_SOURCE)
    if "=" not in text:
        raise ConfigError(text, "override must look like key.sub=value", OVERRIDE_SOURCE)
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(text, "override key is empty", OVERRIDE_SOURCE)
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError(key, f"override key {key!r} has an empty part (expected key.sub=value)", OVERRIDE_SOURCE)
    try:
        value = parse_yaml(raw, OVERRIDE_SOURCE) if raw.strip() else ""
    except ConfigError as exc:
        field = key if exc.field.startswith("<") else f"{key}.{exc.field}"
        raise ConfigError(field, f"override value {raw!r}: {exc.reason}", OVERRIDE_SOURCE) from None
    return [part.strip() for part in key.split(".")], value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of ``data`` with each ``key.sub=value`` override set (creating sub-dicts)."""
    if isinstance(overrides, str):
        raise ConfigError(overrides, "overrides must be a list of 'key.sub=value' strings, not one string", OVERRIDE_SOURCE)
    data = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(keys[: depth + 1]), f"is a value, not a section (override {text!r})", OVERRIDE_SOURCE)
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
    where = f"{prefix}." if prefix else ""
    for key in data:
        if not isinstance(key, str):
            hint = " (YAML 1.1 reads on/off/yes/no as booleans: quote the key)" if isinstance(key, bool) else ""
            raise ConfigError(where + repr(key), f"keys must be strings, got {type(key).__name__} {key!r}{hint}", source)
    unknown = sorted(set(data) - set(fields))
    if unknown:
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
    except ConfigError as exc:  # raised by a __post_init__, which does not know the file
        if exc.source is None and source is not None:
            raise ConfigError(exc.field, exc.reason, source) from None
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(prefix or cls.__name__, str(exc), source) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_config_file(path)
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
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(field_path, "number too large for a float", source) from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(field_path, f"expected a string, got {value!r}", source)
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(field_path, f"expected a path string, got {value!r}", source)
        return Path(value)
    return value
