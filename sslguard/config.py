"""Typed configuration: YAML in, dataclasses out; unknown keys and bad values are errors naming the key.

Only scripts read configs (``load_config``); library code takes typed keyword arguments. Overrides
use dotted keys on the command line: ``ssl.epochs=5 data.name=cifar10 attack=null``.

Each section is a dataclass with a ``validate()`` that raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

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
        value = yaml.safe_load(raw) if raw.strip() else None
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


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)  # safe_load: a config cannot construct arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Read YAML (optional), apply dotted overrides, build and validate ``cls``."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# ----------------------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | imagefolder
    root: Optional[str] = None
    split: str = "train"
    test_split: Optional[str] = "test"  # held-out split for kNN / ASR; None when there is none
    subset_per_class: Optional[int] = None
    image_size: int = 32
    on_error: str = "skip"  # skip | raise, for unreadable image files
    num_workers: int = 0

    def validate(self, key: str = "data") -> None:
        _check(self.name in ("digits", "cifar10", "imagefolder"), f"{key}.name",
               f"unknown dataset {self.name!r}; choose from digits, cifar10, imagefolder")
        _check(self.name != "imagefolder" or self.root is not None, f"{key}.root", "an imagefolder dataset needs a root")
        _check(self.root is None or self.name == "digits" or Path(self.root).exists(), f"{key}.root",
               f"path does not exist: {self.root}")
        _check(self.subset_per_class is None or self.subset_per_class > 0, f"{key}.subset_per_class", "must be positive")
        _check(self.image_size > 0, f"{key}.image_size", "must be positive")
        _check(self.on_error in ("skip", "raise"), f"{key}.on_error", "must be skip or raise")
        _check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")


@dataclass
class AttackConfig:
    name: str = "htba"
    target: int = 0
    rate: float = 0.5
    rate_of: str = "target"  # target | dataset
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # attack-specific keyword arguments

    def validate(self, key: str = "attack") -> None:
        _check(0.0 <= self.rate <= 1.0, f"{key}.rate", f"must be in [0, 1], got {self.rate}")
        _check(self.rate_of in ("target", "dataset"), f"{key}.rate_of", "must be target or dataset")
        _check(self.target >= 0, f"{key}.target", "must be a class id >= 0")
        import inspect

        from sslguard.data.attacks import ATTACKS, list_attacks

        names = list_attacks()
        _check(self.name in names, f"{key}.name", f"unknown attack {self.name!r}; choose from {', '.join(names)}")
        sig = inspect.signature(ATTACKS[self.name].__init__)
        known = [p for p in sig.parameters if p not in ("self", "target", "rate", "rate_of", "seed", "model")]
        for k in self.params:
            _check(k in known, f"{key}.params.{k}", f"not a parameter of {self.name} (known: {', '.join(known)})")


@dataclass
class PoisonConfig:
    """``scripts/poison.py``: poison ``data`` with ``attack``, write the manifest (CSV + JSON) to
    ``output_dir`` and, when ``preview`` names a PNG, a grid of clean versus poisoned examples."""

    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    output_dir: str = "runs/poison"
    preview: Optional[str] = None
    preview_n: int = 8  # examples (columns) in the preview grid
    data_seed: int = 0  # split/subset seed of the dataset; kept apart from attack.seed so the images stay put

    def validate(self) -> None:
        self.data.validate("data")
        self.attack.validate("attack")  # also checks attack.name and attack.params.<key>
        _check(self.preview_n > 0, "preview_n", "must be positive")
        _check(bool(self.output_dir), "output_dir", "must not be empty")
