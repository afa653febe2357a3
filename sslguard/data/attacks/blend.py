"""Blended trigger (Chen, Liu, Li, Lu & Song 2017, "Targeted Backdoor Attacks on Deep Learning Systems
Using Data Poisoning"): a whole-image trigger alpha-blended into the image,
``poisoned = round((1 - alpha) * image + alpha * trigger)``.

Two registry names, one per family, because the family decides which images are poisoned and whether
labels change (and so must be fixed before :meth:`select` runs):

- ``blend``: the SSL form — target-class images only, labels unchanged;
- ``blend_supervised``: all-to-one — images of other classes, labels flipped to the target.

Limits: the default trigger is seeded uniform noise (Chen et al.'s random-noise key pattern; their
Hello-Kitty image can be given as ``trigger_path``). The trigger is resized to each image's size, so
images of different sizes get a rescaled trigger. A small ``alpha`` hides the trigger from people,
not from frequency or spectral defences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.triggers import check_image, load_trigger, noise_pattern


@register_attack("blend")
class Blend(Attack):
    """Alpha-blended whole-image trigger on target-class images, labels unchanged (Chen et al. 2017).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        alpha: blend weight of the trigger in ``(0, 1]``.
        trigger_path: an image file used as the trigger (resized to each image's size).
        trigger_seed: seed of the default noise trigger (defaults to ``seed``).
    """

    family = "ssl"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 alpha: float = 0.2, trigger_path: str | None = None, trigger_seed: int | None = None):
        super().__init__(target, rate, rate_of, seed)
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.trigger_path = str(trigger_path) if trigger_path is not None else None
        self.trigger_seed = int(trigger_seed) if trigger_seed is not None else int(self.seed)
        if self.trigger_path is not None:
            load_trigger(self.trigger_path, 1, 1)  # fail now, naming the file

    def trigger(self, width: int, height: int) -> np.ndarray:
        if self.trigger_path is not None:
            return load_trigger(self.trigger_path, width, height)
        return noise_pattern(self.trigger_seed, width, height)

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        image = check_image(image)
        t = self.trigger(image.shape[1], image.shape[0]).astype(np.float64)
        out = (1.0 - self.alpha) * image.astype(np.float64) + self.alpha * t
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "trigger_path": self.trigger_path,
                "trigger_seed": self.trigger_seed}


@register_attack("blend_supervised")
class BlendSupervised(Blend):
    """The all-to-one form of :class:`Blend`: non-target images, label flipped to ``target``."""

    family = "supervised"
