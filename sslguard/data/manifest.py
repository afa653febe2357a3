"""Ground truth of a poisoning: which indices were changed, by which attack, where, and how.

A :class:`PoisonManifest` has a row for *every* index of the dataset (``poisoned`` 0/1), so that a
manifest on its own says how many images there were, and detection metrics can be computed against
it without the dataset. CSV for people and spreadsheets, JSON for programs; both round-trip.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslguard.utils.io import atomic_write_json, atomic_write_text


@dataclass
class PoisonRecord:
    """One poisoned image. ``location`` is ``(x, y, w, h)`` of the trigger, ``None`` for global triggers."""

    index: int
    original_label: int
    label: int
    location: tuple[int, int, int, int] | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoisonManifest:
    attack: str
    target: int
    seed: int
    keys: np.ndarray
    labels: np.ndarray
    records: dict[int, PoisonRecord]
    attack_params: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    @property
    def poisoned_indices(self) -> np.ndarray:
        return np.asarray(sorted(self.records), dtype=np.int64)

    @property
    def n_poisoned(self) -> int:
        return len(self.records)

    def is_poisoned(self, keys: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Boolean array aligned with ``keys`` (default: the manifest's own keys)."""
        keys = self.keys if keys is None else np.asarray(keys)
        return np.isin(keys, self.poisoned_indices)

    # ------------------------------------------------------------------ I/O
    _CSV_FIELDS = ("index", "poisoned", "attack", "target", "original_label", "label", "x", "y", "w", "h", "params")

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self._CSV_FIELDS)
        for k, lab in zip(self.keys.tolist(), self.labels.tolist()):
            r = self.records.get(k)
            if r is None:
                w.writerow([k, 0, "", "", lab, lab, "", "", "", "", ""])
            else:
                loc = r.location if r.location is not None else ("", "", "", "")
                w.writerow([k, 1, self.attack, self.target, r.original_label, r.label, *loc,
                            json.dumps(r.params, sort_keys=True)])
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "target": int(self.target),
            "seed": int(self.seed),
            "attack_params": self.attack_params,
            "n_total": int(len(self.keys)),
            "n_poisoned": self.n_poisoned,
            "keys": self.keys.tolist(),
            "labels": self.labels.tolist(),
            "records": [
                {**asdict(r), "location": list(r.location) if r.location is not None else None}
                for _, r in sorted(self.records.items())
            ],
        }

    def save(self, directory: str | os.PathLike, stem: str = "manifest") -> tuple[Path, Path]:
        """Write ``<stem>.csv`` and ``<stem>.json`` atomically; returns both paths."""
        d = Path(directory)
        return (atomic_write_text(d / f"{stem}.csv", self.to_csv_text()), atomic_write_json(d / f"{stem}.json", self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoisonManifest":
        records = {}
        for r in d["records"]:
            loc = tuple(int(v) for v in r["location"]) if r.get("location") is not None else None
            records[int(r["index"])] = PoisonRecord(int(r["index"]), int(r["original_label"]), int(r["label"]), loc, r.get("params", {}))
        return cls(d["attack"], int(d["target"]), int(d["seed"]), np.asarray(d["keys"], np.int64),
                   np.asarray(d["labels"], np.int64), records, d.get("attack_params", {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PoisonManifest":
        """Read a manifest from its ``.json`` or ``.csv`` file."""
        path = Path(path)
        if path.suffix == ".json":
            with open(path) as fh:
                return cls.from_dict(json.load(fh))
        if path.suffix == ".csv":
            keys, labels, records, attack, target = [], [], {}, "", -1
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    k = int(row["index"])
                    keys.append(k)
                    labels.append(int(row["original_label"]))
                    if row["poisoned"] == "1":
                        attack, target = row["attack"], int(row["target"])
                        loc = tuple(int(row[c]) for c in "xywh") if row["x"] != "" else None
                        records[k] = PoisonRecord(k, int(row["original_label"]), int(row["label"]), loc,
                                                  json.loads(row["params"]) if row["params"] else {})
            return cls(attack, target, -1, np.asarray(keys, np.int64), np.asarray(labels, np.int64), records)
        raise ValueError(f"{path}: a manifest is a .json or .csv file")
