"""SIG (Barni, Kallas & Tondi, ICIP 2019, "A New Backdoor Attack in CNNs by Training Set Corruption
Without Label Poisoning"): a horizontal sinusoid added to the image,
``v(i, j) = delta * sin(2 * pi * j * frequency / width)``, the same on every row and channel.

Barni et al. proposed it clean-label (target-class images only); here it is the supervised,
all-to-one variant (other classes' images, label flipped to the target), as in most benchmark suites.
For the clean-label form, use ``label_consistent`` or an SSL-family attack.

Limits: the signal is global (no location); results are clipped to ``[0, 255]`` and rounded, so on
saturated pixels the added signal is smaller than ``delta``. The defaults (``delta=20``,
``frequency=6``) are the values most benchmark suites use on CIFAR-sized images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.triggers import check_image


@register_attack("sig")
class SIG(Attack):
    """Additive horizontal sinusoid, label flipped to ``target`` (Barni et al. 2019).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        delta: amplitude in pixel values (0-255 scale).
        frequency: number of periods across the image width.
    """

    family = "supervised"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 delta: float = 20.0, frequency: float = 6.0):
        super().__init__(target, rate, rate_of, seed)
        if not 0.0 < float(delta) <= 255.0:
            raise ValueError(f"delta must be in (0, 255], got {delta}")
        if float(frequency) <= 0:
            raise ValueError(f"frequency must be positive, got {frequency}")
        self.delta = float(delta)
        self.frequency = float(frequency)

    def signal(self, height: int, width: int) -> np.ndarray:
        """The ``(height, width)`` signal added to each channel."""
        j = np.arange(width, dtype=np.float64)
        row = self.delta * np.sin(2.0 * np.pi * j * self.frequency / width)
        return np.broadcast_to(row, (height, width))

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        image = check_image(image)
        v = self.signal(image.shape[0], image.shape[1])[..., None]
        return np.clip(np.rint(image.astype(np.float64) + v), 0, 255).astype(np.uint8)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "delta": self.delta, "frequency": self.frequency}
