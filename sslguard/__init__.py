"""sslguard: find backdoor-poisoned images in (self-supervised) training corpora.

    import sslguard
    result = sslguard.detect("quickstart")          # a shipped config by name, or a YAML path
    result = sslguard.detect(data={"name": "imagefolder", "root": "photos/"}, attack=None, name="photos")
    result = sslguard.detect("quickstart", overrides=["ssl.epochs=2"])
    result.report_path, result.metrics["poisoncam"]["recall"], result.clean_indices

Importing the package is light: the names below are loaded on first use (torch, faiss and matplotlib
are only imported when a run needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "detect": "sslguard.pipeline",
    "load_detect_config": "sslguard.pipeline",
    "RunResult": "sslguard.pipeline",
    "run_pipeline": "sslguard.pipeline",
    "fuse": "sslguard.pipeline",
    "DetectConfig": "sslguard.config",
    "ConfigError": "sslguard.config",
    "load_config": "sslguard.config",
    "DetectionResult": "sslguard.detectors.base",
    "get_detector": "sslguard.detectors",
    "list_detectors": "sslguard.detectors",
    "detection_metrics": "sslguard.metrics",
    "build_dataset": "sslguard.data.datasets",
    "PoisonManifest": "sslguard.data.manifest",
    "poison_dataset": "sslguard.data.poisoned",
    "build_attack": "sslguard.data.attacks",
    "list_attacks": "sslguard.data.attacks",
    "embed_dataset": "sslguard.embed",
    "kmeans": "sslguard.cluster",
    "load_backbone": "sslguard.models.ssl",
    "save_backbone": "sslguard.models.ssl",
    "train_ssl": "sslguard.train.ssl",
    "write_clean_manifest": "sslguard.sanitize",
    "read_index_list": "sslguard.sanitize",
    "read_file_list": "sslguard.sanitize",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sslguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for editors and type checkers; nothing is imported at run time
    from sslguard.pipeline import detect, load_detect_config
    from sslguard.config import ConfigError, DetectConfig, load_config
    from sslguard.detectors import DetectionResult, get_detector, list_detectors
    from sslguard.pipeline import RunResult, fuse, run_pipeline
