"""CTRL (Li, Wang, Xiong, Shi & Lin, ICCV 2023, "An Embarrassingly Simple Backdoor Attack on
Self-supervised Learning"): a frequency-domain trigger on target-class images, labels unchanged.

The image is taken to YUV; the chroma channels (U and V) are cut into ``window_size`` x
``window_size`` blocks; in each block's orthonormal 2-D DCT-II the coefficients at ``frequencies``
get ``+magnitude``; the result goes back to RGB. CTRL's CIFAR-10 setting is window 32, frequencies
(15, 15) and (31, 31), magnitude 50 (a few pixel values in RGB: invisible, and robust to SSL
augmentations because it repeats in every block).

Implementation: YUV conversion and the DCT are linear, so adding ``magnitude`` to a DCT coefficient
of U or V adds one fixed pattern to the RGB pixels. That pattern is computed once per image size
(:meth:`CTRL.pattern`) and added before rounding and clipping, which gives the same image as the
reference implementation's round trip without its repeated per-image float conversions.

Limits: BT.601 analogue YUV is used (the reference code goes through OpenCV's YCrCb, which differs
only in the scaling of the chroma axes, and so in the effective magnitude). Blocks that do not fit
wholly inside an image whose side is not a multiple of ``window_size`` are left untouched.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.fft import idctn

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.triggers import check_image

#: RGB -> YUV (BT.601, analogue form); rows give Y, U, V.
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)
_CHANNELS = {"Y": 0, "U": 1, "V": 2}


@register_attack("ctrl")
class CTRL(Attack):
    """DCT-domain trigger in the U and V channels of target-class images (Li et al. 2023).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        magnitude: value added to each chosen DCT coefficient (pixel scale 0-255).
        window_size: side of the DCT blocks.
        frequencies: ``(u, v)`` coefficient positions inside a block, each ``< window_size``.
        channels: YUV channels carrying the trigger (CTRL uses ``("U", "V")``).
    """

    family = "ssl"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 magnitude: float = 50.0, window_size: int = 32,
                 frequencies: Sequence[Sequence[int]] = ((15, 15), (31, 31)), channels: Sequence[str] = ("U", "V")):
        super().__init__(target, rate, rate_of, seed)
        if float(magnitude) <= 0:
            raise ValueError(f"magnitude must be positive, got {magnitude}")
        if int(window_size) < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        freqs = [tuple(int(v) for v in f) for f in frequencies]
        if not freqs or any(len(f) != 2 or not (0 <= f[0] < window_size and 0 <= f[1] < window_size) for f in freqs):
            raise ValueError(f"frequencies must be (u, v) pairs inside a {window_size}x{window_size} block, "
                             f"got {frequencies}")
        chans = [str(c).upper() for c in channels]
        if not chans or any(c not in _CHANNELS for c in chans):
            raise ValueError(f"channels must be a non-empty subset of Y, U, V, got {channels}")
        self.magnitude = float(magnitude)
        self.window_size = int(window_size)
        self.frequencies = freqs
        self.channels = chans
        self._patterns: dict[tuple[int, int], np.ndarray] = {}

    def pattern(self, height: int, width: int) -> np.ndarray:
        """The float ``(height, width, 3)`` RGB pattern the trigger adds to an image of that size."""
        key = (int(height), int(width))
        if key not in self._patterns:
            ws = self.window_size
            coeffs = np.zeros((ws, ws))
            for u, v in self.frequencies:
                coeffs[u, v] += self.magnitude
            block = idctn(coeffs, type=2, norm="ortho")
            yuv = np.zeros((height, width, 3))
            bh, bw = (height // ws) * ws, (width // ws) * ws
            tiled = np.tile(block, (height // ws, width // ws))
            for c in self.channels:
                yuv[:bh, :bw, _CHANNELS[c]] = tiled
            self._patterns[key] = yuv @ YUV_TO_RGB.T
        return self._patterns[key]

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        image = check_image(image)
        out = image.astype(np.float64) + self.pattern(image.shape[0], image.shape[1])
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "magnitude": self.magnitude, "window_size": self.window_size,
                "frequencies": [list(f) for f in self.frequencies], "channels": list(self.channels)}
