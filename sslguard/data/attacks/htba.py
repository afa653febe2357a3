"""Hidden Trigger Backdoor Attack on SSL (Saha et al., CVPR 2022, "Backdoor Attacks on
Self-Supervised Learning").

A square trigger patch is pasted at a random location on a share of the *target class's* images; labels
are untouched (self-supervised training has none to flip). The SSL model learns to associate the patch
with the target category's features, so at test time the patch pulls any image towards that class.

Limits: the paper pastes a patch of 50x50 px on 224 px ImageNet images (about 0.22 of the side) and
its trigger images are random coloured grids; here the default trigger is :func:`grid_pattern` from
a seed and the size is ``size_fraction`` of the shorter side (or ``trigger_size`` pixels). The position
is drawn per image from the generator handed to :meth:`plan` and recorded in the manifest. The
location is uniform over all positions where the patch fits wholly, so it is never cropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.triggers import check_image, check_size_args, grid_pattern, load_trigger, paste, patch_side


class PatchTrigger:
    """The patch part shared by patch attacks: a user's trigger file or a seeded :func:`grid_pattern`."""

    def _init_patch(self, size_fraction: float, trigger_size: int | None, trigger_path: str | None,
                    trigger_seed: int | None) -> None:
        check_size_args(size_fraction, trigger_size)
        self.size_fraction = float(size_fraction)
        self.trigger_size = int(trigger_size) if trigger_size is not None else None
        self.trigger_path = str(trigger_path) if trigger_path is not None else None
        self.trigger_seed = int(trigger_seed) if trigger_seed is not None else int(self.seed)
        if self.trigger_path is not None:
            load_trigger(self.trigger_path, 1, 1)  # fail now, naming the file, not mid-way through a dataset

    def patch(self, width: int, height: int) -> np.ndarray:
        """The trigger at ``width`` x ``height`` (``uint8`` ``(height, width, 3)``)."""
        if self.trigger_path is not None:
            return load_trigger(self.trigger_path, width, height)
        return grid_pattern(self.trigger_seed, width, height)

    def _patch_params(self) -> dict[str, Any]:
        return {"size_fraction": self.size_fraction, "trigger_size": self.trigger_size,
                "trigger_path": self.trigger_path, "trigger_seed": self.trigger_seed}


@register_attack("htba")
class HTBA(PatchTrigger, Attack):
    """Patch pasted at a random position on target-class images, no label change (Saha et al. 2022).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        size_fraction: side of the square patch as a fraction of the image's shorter side.
        trigger_size: side in pixels; overrides ``size_fraction`` when given.
        trigger_path: an image file used as the trigger (resized to the patch size when it differs).
        trigger_seed: seed of the default trigger (defaults to ``seed``).
    """

    family = "ssl"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 size_fraction: float = 0.25, trigger_size: int | None = None, trigger_path: str | None = None,
                 trigger_seed: int | None = None):
        super().__init__(target, rate, rate_of, seed)
        self._init_patch(size_fraction, trigger_size, trigger_path, trigger_seed)

    def plan(self, image_shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
        h, w = int(image_shape[0]), int(image_shape[1])
        side = patch_side(image_shape, self.size_fraction, self.trigger_size)
        x = int(rng.integers(0, w - side + 1))
        y = int(rng.integers(0, h - side + 1))
        return {"location": (x, y, side, side)}

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        image = check_image(image)
        x, y, pw, ph = (int(v) for v in plan["location"])
        return paste(image, self.patch(pw, ph), x, y)

    def params(self) -> dict[str, Any]:
        return {**super().params(), **self._patch_params()}
