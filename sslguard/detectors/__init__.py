"""Detectors behind a registry. Importing this package registers every built-in detector."""

import importlib
import logging

from sslguard.detectors.base import DETECTORS, DetectionResult, get_detector, list_detectors, register_detector

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

__all__ = ["DETECTORS", "DetectionResult", "get_detector", "list_detectors", "register_detector"]
