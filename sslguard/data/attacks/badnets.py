"""BadNets (Gu, Dolan-Gavitt & Garg 2017, "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain"): a small patch in a fixed corner, all-to-one with the label flipped to the target.

Limits: the paper's triggers are a white square, a bomb or a flower sticker; the default here is the
seeded :func:`~sslguard.data.attacks.triggers.grid_pattern` (pass ``trigger_path`` for another). The
patch sits ``margin`` pixels in from ``corner`` on every poisoned image (and at test time), which is
what makes the attack easy for patch-sensitive detectors; a random position is ``htba``'s behaviour.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.htba import PatchTrigger
from sslguard.data.attacks.triggers import CORNERS, check_image, corner_box, paste, patch_side


@register_attack("badnets")
class BadNets(PatchTrigger, Attack):
    """Corner patch, label flipped to ``target`` (Gu et al. 2017).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        size_fraction: side of the square patch as a fraction of the image's shorter side.
        trigger_size: side in pixels; overrides ``size_fraction`` when given.
        trigger_path: an image file used as the trigger (resized to the patch size when it differs).
        trigger_seed: seed of the default trigger (defaults to ``seed``).
        corner: ``top_left``, ``top_right``, ``bottom_left`` or ``bottom_right``.
        margin: gap in pixels between the patch and the image border.
    """

    family = "supervised"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 size_fraction: float = 0.1, trigger_size: int | None = None, trigger_path: str | None = None,
                 trigger_seed: int | None = None, corner: str = "bottom_right", margin: int = 1):
        super().__init__(target, rate, rate_of, seed)
        self._init_patch(size_fraction, trigger_size, trigger_path, trigger_seed)
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
        if int(margin) < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.corner = corner
        self.margin = int(margin)

    def plan(self, image_shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
        side = patch_side(image_shape, self.size_fraction, self.trigger_size)
        return {"location": corner_box(image_shape, side, side, self.corner, self.margin)}

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        image = check_image(image)
        x, y, pw, ph = (int(v) for v in plan["location"])
        return paste(image, self.patch(pw, ph), x, y)

    def params(self) -> dict[str, Any]:
        return {**super().params(), **self._patch_params(), "corner": self.corner, "margin": self.margin}
