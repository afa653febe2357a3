"""What a run returns (:class:`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunResult:
    """What :func:`run_pipeline` (and :func:`sslguard.detect`) returns.

    ``detections`` maps detector name to its :class:`~sslguard.detectors.base.DetectionResult` (aligned
    with ``index``); ``fused`` is the combined result whose ``flagged`` decided the clean manifest;
    ``metrics`` (detector -> detection metrics) is empty without ground truth; ``paths`` names every
    artefact; ``summary`` is the content of ``summary.json`` (written when the report was made);
    ``cached_stages`` are the stages this call reused instead of running.
    """

    run_dir: Path
    index: np.ndarray
    detections: dict[str, Any]
    fused: Any
    flagged_indices: np.ndarray
    clean_indices: np.ndarray
    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)

    @property
    def report_path(self) -> Path:
        return self.paths["report"]

    def __repr__(self) -> str:
        return (f"RunResult(run_dir={str(self.run_dir)!r}, n={len(self.index)}, flagged={len(self.flagged_indices)}, "
                f"detectors={list(self.detections)})")


