"""The Python API of a detection run: :func:`detect`, :func:`run_pipeline`, :func:`load_detect_config`."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from sslguard.config import DetectConfig, apply_overrides, from_dict, read_yaml, to_dict
from sslguard.pipeline.result import RunResult
from sslguard.pipeline.stages import Pipeline
from sslguard.utils.io import to_json


def run_pipeline(cfg: DetectConfig, quiet: bool = False, accelerator=None) -> RunResult | None:
    """Run (or resume) the whole pipeline for ``cfg``; returns None on non-main accelerate processes.

    ``accelerator``: an ``accelerate.Accelerator`` of your own (default: one made from ``cfg.ssl.mixed_precision``
    on the GPU when there is one); every stage runs on its device."""
    return Pipeline(cfg, quiet=quiet, accelerator=accelerator).run()



def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into ``base`` (mappings merge; anything else, ``None`` included, replaces)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def load_detect_config(config: Any = None, overrides: Sequence[str] | None = None, **sections: Any) -> DetectConfig:
    """A validated :class:`DetectConfig` from a config file path, a mapping, a ``DetectConfig`` or nothing
    (defaults), with ``sections`` (top-level keys: ``data={...}``, ``attack=None``, ``name="x"``) merged in
    and dotted ``overrides`` (``["ssl.epochs=2"]``) applied last. Raises :class:`ConfigError` naming the key."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, DetectConfig):
        data = to_dict(config)
    elif isinstance(config, dict):
        data = json.loads(to_json(config, indent=None))  # a deep copy; the caller's mapping is not changed
    elif isinstance(config, (str, os.PathLike)):
        data = read_yaml(config, DetectConfig.CONFIG_FOLDER)  # a path, or a shipped config's name
    else:
        raise TypeError(f"config must be a path, a mapping or a DetectConfig, not {type(config).__name__}")
    _merge(data, sections)
    apply_overrides(data, list(overrides or []))
    return from_dict(DetectConfig, data)


def detect(config: Any = None, *, overrides: Sequence[str] | None = None, quiet: bool = False,
           **sections: Any) -> RunResult:
    """Run the detection pipeline from Python, exactly as ``scripts/detect.py`` does; returns a :class:`RunResult`.

    ``config``: a YAML path, a mapping, a :class:`DetectConfig` or ``None`` (defaults: digits, no attack).
    ``sections``: top-level keys merged over it, e.g. ``detect(data={"name": "imagefolder", "root": "pics"},
    attack=None, name="pics")``. ``overrides``: dotted ``key=value`` strings. A finished run with the same
    configuration is reused stage by stage (see the module docstring)."""
    cfg = load_detect_config(config, overrides, **sections)
    result = run_pipeline(cfg, quiet=quiet)
    if result is None:
        raise RuntimeError("sslguard.detect: this process is not the main process of a distributed launch")
    return result
