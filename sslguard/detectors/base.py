"""Detector contract: one file per detector, registered by name, returning a :class:`DetectionResult`.

A detector takes explicit typed arguments (embeddings, a model, a dataset...) and returns one score
per dataset index (higher = more suspicious), the flags it raises, its threshold, and evidence keyed
by the same index (cluster ids, CAM windows, per-class statistics). Results are written as CSV (one
row per index) and JSON (everything), so a person and a program can both read them.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sslguard.utils.io import atomic_write_json, atomic_write_text

DETECTORS: dict[str, "DetectorSpec"] = {}


def robust_z(values: np.ndarray, floor: float) -> np.ndarray:
    """``(values - median) / (1.4826 * MAD + floor)``: how many robust standard deviations each value
    lies above the others' median (1.4826 * MAD estimates a normal standard deviation; ``floor`` keeps
    identical values from dividing by zero). The class-level outlier test of several detectors."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return v
    med = float(np.median(v))
    return (v - med) / (float(1.4826 * np.median(np.abs(v - med))) + floor)


def robust_threshold(values: np.ndarray, z: float) -> tuple[float, float, float]:
    """``median + z * 1.4826 * MAD`` of ``values`` (the MAD outlier rule, Iglewicz & Hoaglin 1993);
    returns ``(threshold, median, scale)``. The scale falls back to the std when the MAD is 0."""
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    scale = 1.4826 * float(np.median(np.abs(v - med)))
    if scale <= 0:
        scale = float(v.std()) or 1e-12
    return med + z * scale, med, scale


def classifier_cut(scores: np.ndarray, held_out: np.ndarray, z: float) -> tuple[float, dict[str, float]]:
    """The flag threshold of a poison classifier's logits ``scores`` (the final step of PoisonCAM and
    PatchSearch): the valley of the corpus' logits (Otsu), but never inside the bulk of ``held_out``
    clean positions (their MAD bound at ``z``), which keeps a unimodal, poison-free logit distribution
    from being cut in half. The classifier's own boundary (logit 0) is not used: it moves with the class
    balance and the epochs it was trained (PatchSearch flagged none of the planted or quickstart poisons
    at logit 0 while ranking them first)."""
    held_out = np.asarray(held_out, dtype=np.int64)
    null_bound = robust_threshold(scores[held_out], z)[0] if len(held_out) >= 2 else -np.inf
    otsu = otsu_threshold(scores)
    return max(otsu, null_bound), {"otsu": float(otsu), "null_bound": float(null_bound),
                                   "n_held_out": int(len(held_out))}


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's (1979) threshold of a 1-D sample: the histogram cut that maximises the between-group
    variance, i.e. the valley of a bimodal score distribution. Written here because scikit-image, which
    has it, is not a dependency. On a unimodal sample it still returns a cut (near the middle), so callers
    pair it with a null-sample bound."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v) or v.min() == v.max():
        return float(v.max()) if len(v) else float("nan")
    hist, edges = np.histogram(v, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(edges[1:][np.argmax(w0 * w1 * (m0 - m1) ** 2)])


# What the pipeline hands the detectors of each stage (the detector contract, written once: config
# validation and the pipeline both read it). "benign" and "reference" are the trusted held-out split, there
# only when the corpus has a labeled test split.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "ssl": ("backbone", "dataset", "embeddings", "clusters"),
    "classifier": ("model", "dataset", "benign", "reference"),
}
# Set by the pipeline for every detector; a config may not override them.
RUNTIME_INPUTS: tuple[str, ...] = ("accelerator", "device", "progress")


@dataclass(frozen=True)
class DetectorSpec:
    """A registered detector: its function, the stage that runs it (``ssl``: encoder + clusters;
    ``classifier``: a classifier trained on the labeled corpus) and the arguments it cannot run without."""

    name: str
    fn: Callable[..., Any]
    stage: str
    needs: tuple[str, ...]
    # "cluster": flags one cluster of a class as a whole, chosen against trusted images (activation and
    # heatmap clustering); "image": decides image by image (a cut, a budget, a poison classifier). The
    # fused "agree" rule lets a cluster detector's flags stand in a class another detector also flags.
    unit: str = "image"

    def missing(self, available: dict[str, Any] | set[str], params: dict[str, Any] | None = None) -> list[str]:
        """The needed arguments that neither ``available`` nor ``params`` provide."""
        return [n for n in self.needs if n not in available and n not in (params or {})]

    def settable(self) -> list[str]:
        """Keyword arguments a config may set (``detectors.params.<name>``)."""
        import inspect

        # precomputed activations are a Python-only shortcut: an array has no place in a YAML config
        fixed = set(RUNTIME_INPUTS) | {n for ins in STAGE_INPUTS.values() for n in ins} | {"activations"}
        return [p for p in inspect.signature(self.fn).parameters if p not in fixed]


def register_detector(name: str, stage: str, unit: str = "image"):
    """Register a detector function under ``name`` for ``stage`` (``@register_detector("poisoncam",
    stage="ssl")``); what it needs is read from its required parameters. ``unit``: what one flagging
    decision covers, ``"image"`` or ``"cluster"`` (:class:`DetectorSpec`)."""
    import inspect

    if stage not in STAGE_INPUTS:
        raise ValueError(f"stage must be one of {sorted(STAGE_INPUTS)}, got {stage!r}")
    if unit not in ("image", "cluster"):
        raise ValueError(f"unit must be 'image' or 'cluster', got {unit!r}")

    def deco(obj):
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} registered twice")
        sig = inspect.signature(obj)
        needs = tuple(p for p, v in sig.parameters.items() if v.default is v.empty
                      and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY))
        DETECTORS[name] = DetectorSpec(name, obj, stage, needs, unit)
        try:
            obj.name = name
        except (AttributeError, TypeError):
            pass
        return obj

    return deco


@dataclass
class DetectionResult:
    """Scores for every index. ``evidence`` holds arrays aligned with ``index`` (per-image evidence,
    e.g. ``cluster`` (N,), ``box`` (N, 4) as x, y, w, h) and ``info`` holds run-level facts
    (per-class statistics, chosen clusters, timings)."""

    name: str
    index: np.ndarray
    scores: np.ndarray
    flagged: np.ndarray
    threshold: float
    evidence: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.flagged = np.asarray(self.flagged, dtype=bool)
        n = len(self.index)
        if len(self.scores) != n or len(self.flagged) != n:
            raise ValueError(f"{self.name}: index, scores and flagged must have the same length")
        if len(np.unique(self.index)) != n:
            raise ValueError(f"{self.name}: an index appears more than once")
        for k, v in self.evidence.items():
            if len(v) != n:
                raise ValueError(f"{self.name}: evidence {k!r} has {len(v)} rows for {n} indices")

    @property
    def flagged_indices(self) -> np.ndarray:
        return self.index[self.flagged]

    def aligned(self, keys: np.ndarray) -> "DetectionResult":
        """The same result reordered to ``keys`` (every key must be present)."""
        order = {int(k): i for i, k in enumerate(self.index)}
        try:
            pos = np.asarray([order[int(k)] for k in keys], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"{self.name}: no score for index {exc.args[0]}") from None
        return DetectionResult(self.name, self.index[pos], self.scores[pos], self.flagged[pos], self.threshold,
                               {k: np.asarray(v)[pos] for k, v in self.evidence.items()}, dict(self.info))

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        ev_cols = []
        for k, v in self.evidence.items():
            v = np.asarray(v)
            ev_cols += [(k, None)] if v.ndim == 1 else [(k, j) for j in range(v.shape[1])]
        w.writerow(["index", "score", "flagged"] + [k if j is None else f"{k}_{j}" for k, j in ev_cols])
        order = np.argsort(self.index, kind="stable")
        for i in order:
            row = [int(self.index[i]), repr(float(self.scores[i])), int(self.flagged[i])]
            for k, j in ev_cols:
                v = np.asarray(self.evidence[k])
                val = v[i] if j is None else v[i, j]
                row.append(val.item() if hasattr(val, "item") else val)
            w.writerow(row)
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": float(self.threshold),
            "n": int(len(self.index)),
            "n_flagged": int(self.flagged.sum()),
            "index": self.index,
            "scores": self.scores,
            "flagged": self.flagged,
            "evidence": {k: np.asarray(v) for k, v in self.evidence.items()},
            "info": self.info,
        }

    def to_csv(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.to_csv_text())

    def to_json(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectionResult":
        return cls(d["name"], np.asarray(d["index"]), np.asarray(d["scores"], dtype=np.float64), np.asarray(d["flagged"]),
                   float(d["threshold"]), {k: np.asarray(v) for k, v in d.get("evidence", {}).items()}, d.get("info", {}))

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "DetectionResult":
        import json

        with open(path) as fh:
            return cls.from_dict(json.load(fh))
