"""Validated YAML configs: nested frozen dataclasses hold the defaults; loading checks every key and type.

Each module declares its settings as a dataclass next to the code that uses them (one place for
defaults); this module is the one loader that turns YAML into those dataclasses (`load_yaml`,
`from_dict`), applies `--set key.sub=value` overrides (`apply_overrides`, `merge`) and writes them back
(`to_dict`), or raises ConfigError naming the key and the file. Range checks that a type cannot express
stay beside each dataclass (its `__post_init__` or the module's own check after `from_dict`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from histo.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping from a file; ConfigError when the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: cannot read config: file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict[str, Any] | None, source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with their dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T is any dataclass
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        bare = f"; '{unknown[0]}' is not one of them" if prefix else ""
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (allowed here: {', '.join(sorted(fields))}){bare}"
        )
    required = [f.name for f in fields.values() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.init]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}': missing key '{missing[0]}'")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], source, f"{prefix}{name}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {exc}") from exc
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML/JSON-able values (the resolved config saved beside outputs)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge nested `overrides` into a copy of `data`; a None override removes the key (its default applies)."""
    out = _deepcopy(data)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = _deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested mapping, returning a new mapping."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: value of {key!r} is not valid YAML ({exc})") from exc
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


_LIST_OF = {str: "strings", float: "numbers", int: "integers", bool: "true/false values"}


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=key + ".")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: '{key}' has an invalid value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(f"{source}: '{key}' must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        if inner in _LIST_OF:  # a list of plain values: name the list and what its items must be
            try:
                items = [_convert(v, inner, source, f"{key}[{i}]") for i, v in enumerate(value)]
            except ConfigError:
                raise ConfigError(f"{source}: '{key}' must be a list of {_LIST_OF[inner]}, got {value!r}") from None
        else:
            items = [_convert(v, inner, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is not Any:  # each value checked under its dotted key ('metrics.bacc')
            return {k: _convert(v, args[1], source, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be float, got {value!r} (the value must be a number)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{source}: '{key}': unsupported setting type {tp!r}")
