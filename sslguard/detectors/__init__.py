"""Detectors behind a registry. Importing this package registers every built-in detector, so the lookups
(:func:`detector_spec`, :func:`get_detector`, :func:`list_detectors`) live here: ``base.py`` holds the
registry and the result type and never imports its own package back."""

import importlib
import logging
from typing import Any, Callable

from sslguard.detectors.base import (
    DETECTORS,
    RUNTIME_INPUTS,
    STAGE_INPUTS,
    DetectionResult,
    DetectorSpec,
    register_detector,
)

_BUILTIN = (
    "poisoncam",
    "patchsearch",
    "density",
    "activation_clustering",
    "heatmap_clustering",
    "critical_layer",
    "spectral",
)

for _name in _BUILTIN:
    try:
        importlib.import_module(f"sslguard.detectors.{_name}")
    except ModuleNotFoundError as _exc:  # a detector whose module is not there yet, or an optional dep missing
        if _exc.name != f"sslguard.detectors.{_name}":
            logging.getLogger(__name__).debug("detector %s unavailable: %s", _name, _exc)


def detector_spec(name: str) -> DetectorSpec:
    """The registry entry of ``name``; an unknown name is an error listing the known ones."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(DETECTORS)}") from None


def get_detector(name: str) -> Callable[..., Any]:
    """The detector function registered as ``name``."""
    return detector_spec(name).fn


def list_detectors(stage: str | None = None) -> list[str]:
    """Registered detector names (of one ``stage`` when given), sorted."""
    return sorted(n for n, s in DETECTORS.items() if stage is None or s.stage == stage)


__all__ = ["DETECTORS", "RUNTIME_INPUTS", "STAGE_INPUTS", "DetectionResult", "DetectorSpec", "detector_spec",
           "get_detector", "list_detectors", "register_detector"]
