"""A dataset with an attack applied to chosen indices, and the manifest that records it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sslguard.data.attacks.base import Attack
from sslguard.data.datasets import IndexedDataset
from sslguard.data.manifest import PoisonManifest, PoisonRecord


class PoisonedDataset(IndexedDataset):
    """``base`` with ``attack`` applied to the indices in ``manifest``; source data are never modified.

    Poisoned images are computed from the base image and the stored per-image plan, so they are the
    same every time; with ``cache=True`` (default) each is computed once and kept in memory (poisons
    are a small share of a corpus, and some attacks such as PGD are costly).
    """

    def __init__(self, base: IndexedDataset, attack: Attack, manifest: PoisonManifest, cache: bool = True):
        self.base = base
        self.attack = attack
        self.manifest = manifest
        self.classes = base.classes
        self.keys = base.keys
        self.skipped = list(getattr(base, "skipped", []))
        labels = base.labels.copy()
        pos_of = {int(k): i for i, k in enumerate(base.keys)}
        self._plan_at: dict[int, PoisonRecord] = {}
        for k, rec in manifest.records.items():
            if k not in pos_of:
                raise KeyError(f"manifest index {k} is not in the dataset")
            p = pos_of[k]
            labels[p] = rec.label
            self._plan_at[p] = rec
        self.labels = labels
        self.clean_labels = base.labels
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    @property
    def poisoned_mask(self) -> np.ndarray:
        mask = np.zeros(len(self), dtype=bool)
        mask[list(self._plan_at)] = True
        return mask

    def load_array(self, pos: int) -> np.ndarray:
        rec = self._plan_at.get(pos)
        if rec is None:
            return self.base.load_array(pos)
        if self._cache is not None and pos in self._cache:
            return self._cache[pos]
        plan = dict(rec.params)
        if rec.location is not None:
            plan["location"] = rec.location
        out = self.attack.apply(self.base.load_array(pos), plan)
        if self._cache is not None:
            self._cache[pos] = out
        return out

    def load_image(self, pos: int) -> Image.Image:
        return Image.fromarray(self.load_array(pos), mode="RGB")

    def path(self, pos: int) -> str | None:
        return self.base.path(pos)


def poison_dataset(dataset: IndexedDataset, attack: Attack) -> tuple[PoisonedDataset, PoisonManifest]:
    """Choose indices with the attack's seed, plan each image, and return the poisoned view + manifest."""
    positions = attack.select(dataset.labels)
    attack.prepare(dataset, positions)
    records: dict[int, PoisonRecord] = {}
    for j, p in enumerate(positions.tolist()):
        # One generator per image, keyed by (seed, key), so a plan does not depend on the others.
        key = int(dataset.keys[p])
        rng = np.random.default_rng([attack.seed, 1, key])
        shape = dataset.load_array(p).shape
        plan = attack.plan(shape, rng)
        loc = plan.pop("location", None)
        label = attack.target if attack.flips_label else int(dataset.labels[p])
        records[key] = PoisonRecord(key, int(dataset.labels[p]), label,
                                    tuple(int(v) for v in loc) if loc is not None else None, plan)
    manifest = PoisonManifest(attack.name, attack.target, attack.seed, dataset.keys.copy(), dataset.labels.copy(),
                              records, attack.params())
    return PoisonedDataset(dataset, attack, manifest), manifest
