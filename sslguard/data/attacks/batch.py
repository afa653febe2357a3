"""Test-time triggering of many images at once, for measuring attack success rate (ASR)."""

from __future__ import annotations

import numpy as np

from sslguard.data.attacks.base import Attack


def apply_trigger_batch(attack: Attack, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """:meth:`Attack.apply_test` on every image of a ``uint8`` ``(N, H, W, 3)`` array; returns a new array.

    Image ``i`` gets its own generator ``default_rng([seed, 2, i])``, so per-image choices (an HTBA
    patch position) are reproducible and do not depend on the batch around them. The input is not
    modified. Attacks with a vectorised form (WaNet's ``warp_batch``) use it; the results are the same.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}")
    warp = getattr(attack, "warp_batch", None)
    if warp is not None and type(attack).apply_test is Attack.apply_test:
        return warp(images)
    out = np.empty_like(images)
    for i in range(len(images)):
        out[i] = attack.apply_test(images[i], np.random.default_rng([int(seed), 2, i]))
    return out
