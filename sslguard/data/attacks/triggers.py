"""Trigger images shared by the attacks: a user's file, or a deterministic default from a seed.

A user's trigger (``trigger_path``) is read with :func:`sslguard.data.images.load_rgb` (so any mode,
alpha or EXIF orientation is handled as everywhere else) and used as given: when the file already has
the size asked it is pasted pixel for pixel; otherwise it is resized to that size (nearest neighbour
when enlarging, so a small pixel pattern keeps its exact colours; Lanczos when shrinking, so it does not
alias). Default triggers are pure functions of a seed and a size, so a seed names a trigger.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image

from sslguard.data.images import ImageLoadError, load_rgb

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def patch_side(image_shape: tuple[int, ...], size_fraction: float, trigger_size: int | None) -> int:
    """Side in pixels of a square trigger: ``trigger_size`` if given, else a fraction of the shorter side."""
    h, w = int(image_shape[0]), int(image_shape[1])
    side = int(trigger_size) if trigger_size is not None else int(round(size_fraction * min(h, w)))
    side = max(1, side)
    if side > min(h, w):
        raise ValueError(f"trigger of {side} px does not fit an image of {w}x{h}")
    return side


def check_size_args(size_fraction: float, trigger_size: int | None) -> None:
    if not 0.0 < float(size_fraction) <= 1.0:
        raise ValueError(f"size_fraction must be in (0, 1], got {size_fraction}")
    if trigger_size is not None and int(trigger_size) < 1:
        raise ValueError(f"trigger_size must be >= 1 pixel, got {trigger_size}")


def resize_rgb(img: Image.Image, width: int, height: int) -> np.ndarray:
    """``img`` as a ``uint8`` ``(height, width, 3)`` array; unchanged when it already has that size."""
    if img.size == (width, height):
        return np.asarray(img, dtype=np.uint8).copy()
    enlarging = width >= img.width and height >= img.height
    resample = Image.Resampling.NEAREST if enlarging else Image.Resampling.LANCZOS
    return np.asarray(img.resize((width, height), resample), dtype=np.uint8).copy()


@lru_cache(maxsize=64)
def _load_trigger_cached(path: str, mtime_ns: int, width: int, height: int) -> np.ndarray:
    arr = resize_rgb(load_rgb(path), width, height)
    arr.setflags(write=False)  # shared between calls through the cache
    return arr


def load_trigger(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """A user's trigger file at ``width`` x ``height`` (read once per size; re-read if the file changes)."""
    path = str(path)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise ImageLoadError(path, f"trigger file cannot be read ({exc.strerror or exc})") from None
    return _load_trigger_cached(path, mtime, int(width), int(height))


def grid_pattern(seed: int, width: int, height: int, cells: int = 4) -> np.ndarray:
    """Default patch trigger: a ``cells`` x ``cells`` grid of random RGB colours drawn from ``seed``,
    enlarged with nearest neighbour to ``width`` x ``height``.

    This mirrors the random coloured-square triggers released with Saha et al. (2022); the colours
    depend only on ``seed`` (not on the size), so the same seed gives the same-looking patch at any size.
    """
    rng = np.random.default_rng([int(seed), 7001])
    cells_rgb = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    rows = (np.arange(height) * cells) // height
    cols = (np.arange(width) * cells) // width
    return cells_rgb[rows[:, None], cols[None, :]]


def noise_pattern(seed: int, width: int, height: int) -> np.ndarray:
    """Default blend trigger: uniform random RGB noise of the image's size, drawn from ``seed``
    (the random-noise key pattern of Chen et al. 2017)."""
    rng = np.random.default_rng([int(seed), 7002, int(height), int(width)])
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def corner_box(image_shape: tuple[int, ...], side_w: int, side_h: int, corner: str,
               margin: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of a ``side_w`` x ``side_h`` box ``margin`` pixels in from ``corner``."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    if side_w + margin > w or side_h + margin > h:
        raise ValueError(f"a {side_w}x{side_h} trigger with margin {margin} does not fit an image of {w}x{h}")
    x = margin if corner.endswith("left") else w - margin - side_w
    y = margin if corner.startswith("top") else h - margin - side_h
    return (x, y, side_w, side_h)


def paste(image: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    """A copy of ``image`` with ``patch`` written at ``(x, y)`` (top-left corner)."""
    out = np.array(image, dtype=np.uint8, copy=True)
    ph, pw = patch.shape[:2]
    out[y:y + ph, x:x + pw] = patch
    return out


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"attacks take uint8 (H, W, 3) images; got {image.dtype} {image.shape}")
    return image
