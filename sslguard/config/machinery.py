"""Config machinery: YAML in, dataclasses out; unknown keys and bad values are errors naming the key.

Only scripts read configs (``load_config``); library code takes typed keyword arguments. Overrides
use dotted keys on the command line: ``ssl.epochs=5 data.name=cifar10 attack=null``. This module knows no
section: the sections live in :mod:`sslguard.config.sections` and :mod:`sslguard.config.detect`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key (``ssl.epochs: ...``)."""


# --------------------------------------------------------------------------------------- machinery


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:  # Optional[X]: X's own message names the inner key
            return _coerce(value, non_none[0], key)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            key = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None and not prefix:
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: an override is key=value (for example ssl.epochs=5)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{item}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:  # includes !!python/... tags, which safe_load refuses
            raise ConfigError(f"{key}: {raw!r} is not a valid YAML value ({_yaml_problem(exc)})") from None
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return (getattr(exc, "problem", None) or type(exc).__name__) + where


def shipped_configs(folder: str) -> dict[str, Path]:
    """The configs shipped with the package for one schema (``sslguard/configs/<folder>/*.yaml``), by name."""
    from importlib.resources import files

    base = Path(str(files("sslguard") / "configs" / folder))
    return {p.stem: p for p in sorted(base.glob("*.yaml"))} if base.is_dir() else {}


def find_config(config: str | os.PathLike, folder: str | None = None) -> Path:
    """``config`` as a file: an existing path, else the name of a config shipped for ``folder``
    (``quickstart`` or ``quickstart.yaml``), so the installed command works from any directory."""
    path = Path(config)
    if path.exists() or folder is None:
        return path
    shipped = shipped_configs(folder)
    name = path.name.removesuffix(".yaml")
    if str(path.parent) == "." and name in shipped:
        return shipped[name]
    raise ConfigError(f"--config: file not found: {path} (shipped {folder} configs: {', '.join(shipped) or 'none'})")


def read_yaml(path: str | os.PathLike, folder: str | None = None) -> dict[str, Any]:
    """The mapping in a YAML file (a path, or the name of a config shipped for ``folder``)."""
    path = find_config(path, folder)
    if not path.exists():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)  # safe_load: a config cannot construct arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    except UnicodeDecodeError as exc:  # a binary file (an image, a checkpoint) passed as the config
        raise ConfigError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Read YAML (optional; a path or the name of a config shipped for ``cls``), apply dotted overrides,
    build and validate ``cls``."""
    data = read_yaml(path, getattr(cls, "CONFIG_FOLDER", None)) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines (what ``--help`` shows beside each key)."""
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every dotted key of config dataclass ``cls`` with its default (YAML) and comment, for ``--help``.

    An optional section whose default is ``null`` (``attack``) lists its keys with the section's own
    defaults, since setting any of them switches the section on."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    obj = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (Union, types.UnionType) else [tp]
        value = getattr(obj, f.name)
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            if value is None:
                rows.append((key, "null", comments.get(f.name, "")))
            rows += describe_keys(inner[0], f"{key}.")
            continue
        default = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10_000).strip()
        if default.endswith("\n..."):  # PyYAML's end-of-document marker after a bare scalar
            default = default[:-4]
        rows.append((key, default, comments.get(f.name, "")))
    return rows
