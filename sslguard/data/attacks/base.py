"""Attacks are data, not code paths: an :class:`Attack` says which indices it poisons (seeded), how
it changes one image, and what it writes to the manifest.

Three families (``family`` class attribute):

- ``"ssl"``: only target-class images are poisoned and no label changes (the trigger rides on the
  class's images, as in SSL backdoors such as Saha et al. 2022);
- ``"supervised"``: all-to-one; images of other classes get the trigger and the target label;
- ``"label_consistent"``: target-class images, labels unchanged, made harder to learn from their
  content so the model leans on the trigger (Turner et al. 2019).

``rate_of`` says what ``rate`` is a fraction of: the target class (``"target"``) or the whole dataset
(``"dataset"``). The images poisoned are drawn from the family's pool (target class for ssl and
label-consistent attacks, the other classes for supervised ones).

Per-image randomness (a patch's position, say) is drawn once, at planning time, from the attack's
seed and stored in the manifest record; :meth:`Attack.apply` is a pure function of the image and
that plan, so the same seed gives byte-identical images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

ATTACKS: dict[str, type["Attack"]] = {}


def register_attack(name: str) -> Callable[[type["Attack"]], type["Attack"]]:
    def deco(cls: type["Attack"]) -> type["Attack"]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return deco


class Attack(ABC):
    name: ClassVar[str] = "attack"
    family: ClassVar[str] = "ssl"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"attack.rate must be in [0, 1], got {rate}")
        if rate_of not in ("target", "dataset"):
            raise ValueError(f"attack.rate_of must be 'target' or 'dataset', got {rate_of!r}")
        if target < 0:
            raise ValueError(f"attack.target must be a class id >= 0, got {target}")
        self.target = int(target)
        self.rate = float(rate)
        self.rate_of = rate_of
        self.seed = int(seed)

    # ---------------------------------------------------------------- selection
    @property
    def flips_label(self) -> bool:
        return self.family == "supervised"

    def pool(self, labels: np.ndarray) -> np.ndarray:
        """Positions the poisons are drawn from."""
        if self.family == "supervised":
            return np.flatnonzero(labels != self.target)
        return np.flatnonzero(labels == self.target)

    def count(self, labels: np.ndarray) -> int:
        base = int((labels == self.target).sum()) if self.rate_of == "target" else len(labels)
        return int(round(self.rate * base))

    def select(self, labels: np.ndarray) -> np.ndarray:
        """Sorted positions to poison, drawn without replacement from :meth:`pool` with the attack's seed."""
        labels = np.asarray(labels)
        if self.family != "supervised" and (labels < 0).all():
            raise ValueError("this attack poisons the target class, but the dataset has no labels")
        pool = self.pool(labels)
        n = self.count(labels)
        if n > len(pool):
            raise ValueError(f"attack.rate asks for {n} poisons but only {len(pool)} images are eligible")
        rng = np.random.default_rng([self.seed, 0])
        return np.sort(rng.choice(pool, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)

    # ---------------------------------------------------------------- per image
    def plan(self, image_shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
        """Per-image parameters (JSON-serialisable); may include ``location`` = (x, y, w, h)."""
        return {}

    @abstractmethod
    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        """Return the poisoned copy of a ``uint8`` ``(H, W, 3)`` image (the input is not modified)."""

    def apply_test(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Test-time trigger, for measuring attack success on held-out images."""
        rng = rng if rng is not None else np.random.default_rng([self.seed, 2])
        return self.apply(image, self.plan(image.shape, rng))

    def prepare(self, dataset, positions: np.ndarray) -> None:
        """Hook for attacks that need the whole poison set first (label-consistent PGD); default no-op."""

    def params(self) -> dict[str, Any]:
        """Attack-level parameters written into the manifest."""
        return {"target": self.target, "rate": self.rate, "rate_of": self.rate_of, "seed": self.seed}
