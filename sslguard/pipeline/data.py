"""The corpus a run sanitises: the dataset, its held-out split, the injected attacks and their ground truth."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslguard.config import DetectConfig, to_dict
from sslguard.data import PoisonedDataset, build_dataset, poison_dataset
from sslguard.utils.rundir import fingerprint


@dataclass
class DataBundle:
    """The corpus to sanitise (poisoned view when attacks are injected) and what comes with it.

    ``manifest``/``attack`` are the main attack (the one the backdoor check triggers); ``manifests`` and
    ``attacks`` list every injected attack (main first, then ``extra_attack``); the ground truth is
    their union."""

    train: Any
    test: Any | None
    manifest: Any | None
    attack: Any | None
    root: str | None
    manifests: list[Any] = field(default_factory=list)
    attacks: list[Any] = field(default_factory=list)

    @property
    def keys(self) -> np.ndarray:
        return np.asarray(self.train.keys, dtype=np.int64)

    @property
    def truth(self) -> np.ndarray | None:
        if not self.manifests:
            return None
        return np.logical_or.reduce([m.is_poisoned(self.keys) for m in self.manifests])

    def attack_labels(self) -> list[str]:
        """A name per injected attack (its attack name, numbered when two share one)."""
        names = [m.attack for m in self.manifests]
        return [n if names.count(n) == 1 else f"{n}{i + 1}" for i, n in enumerate(names)]

    def class_name(self, c: int) -> str:
        """The name of class ``c`` ("" for -1, the id itself when the corpus has no names for it)."""
        classes = self.train.classes
        return classes[c] if 0 <= c < len(classes) else ("" if c < 0 else str(c))

    def paths(self) -> list[str]:
        return [p or "" for p in self.train.all_paths()]



def unpoisoned(dataset):
    """The dataset under every injected attack (the clean images, with their clean labels)."""
    while isinstance(dataset, PoisonedDataset):
        dataset = dataset.base
    return dataset


def load_data(cfg: DetectConfig) -> DataBundle:
    """Build the dataset (and test split), and inject ``cfg.attack`` (then ``cfg.extra_attack``) when set.

    The extra attack draws its poisons from the corpus as the first attack left it, so with the same
    target class a label-flip attack (whose pool is the other classes) never re-poisons an image."""

    d = cfg.data
    ds = build_dataset(d.name, d.split, d.root, d.subset_per_class, cfg.seed, d.on_error, d.image_size)
    test = None
    if d.test_split:
        # An image folder without that sub-folder would fall back to the root itself (the training
        # images), which would make every held-out number meaningless.
        has_split = d.name != "imagefolder" or (d.root is not None and (Path(d.root) / d.test_split).is_dir())
        if has_split:
            test = build_dataset(d.name, d.test_split, d.root, None, cfg.seed, d.on_error, d.image_size)
    manifests, attacks = [], []
    for a in (cfg.attack, cfg.extra_attack):
        if a is None:
            continue
        attack = a.build()
        ds, manifest = poison_dataset(ds, attack)
        manifests.append(manifest)
        attacks.append(attack)
    root = None
    if d.name == "imagefolder" and d.root is not None:
        root = str(Path(d.root) / d.split) if d.split and (Path(d.root) / d.split).is_dir() else str(d.root)
    return DataBundle(ds, test, manifests[0] if manifests else None, attacks[0] if attacks else None, root,
                      manifests, attacks)


def data_fingerprint(cfg: DetectConfig, data: DataBundle) -> str:
    """Configuration of the data and attack + the corpus itself (keys, labels, files' size and mtime)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.keys).tobytes())
    h.update(np.ascontiguousarray(np.asarray(data.train.labels, np.int64)).tobytes())
    for p in data.paths():
        if p:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for m in data.manifests:
        h.update(m.to_csv_text().encode())
    return fingerprint("data", to_dict(cfg.data), to_dict(cfg.attack), to_dict(cfg.extra_attack), cfg.seed,
                       h.hexdigest())


# ------------------------------------------------------------------------------------------ results



def held_out_bank(data: DataBundle, seed: int, share: float = 0.2, cap: int = 2000):
    """Without a labelled test split: a seeded ``share`` (at most ``cap``) of the corpus images that no
    attack touched, outside the target class, is the test set; the rest of the unpoisoned corpus is the
    kNN bank. An image is never its own neighbour, so the check still reads what the encoder learned."""
    clean = unpoisoned(data.train)
    truth = data.truth
    ok = np.flatnonzero((np.asarray(clean.labels) != data.attack.target) & ~truth)
    rng = np.random.default_rng([seed, 8])
    pick = np.sort(rng.choice(ok, size=min(cap, max(1, int(share * len(ok)))), replace=False))
    rest = np.setdiff1d(np.arange(len(clean)), pick)
    return clean.subset(rest), clean.subset(pick)
