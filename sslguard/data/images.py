"""Turning any image file into an RGB array, or a clear reason why not.

Documented outcomes (tests in tests/data/test_images.py):

- grey (``L``, ``1``), grey+alpha, palette (with or without transparency), RGBA, CMYK, YCbCr, LAB,
  16-bit (``I;16*``) and 32-bit integer/float images are converted to 8-bit RGB; alpha is composited
  over white so that transparent areas do not reveal whatever colour happened to be stored there;
- EXIF orientation is applied, so a rotated phone photo is seen upright;
- zero-byte, truncated, corrupt or non-image files, and images over the decompression-bomb pixel
  limit, raise :class:`ImageLoadError` naming the file and the reason (callers skip-and-log or fail).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

#: Default pixel limit. PIL's own default (~89 Mpx) is kept; larger images are refused as possible bombs.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageLoadError(RuntimeError):
    """An image file that cannot be turned into pixels. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a dataset, with the reason; listed in reports so nothing is lost silently."""

    path: str
    reason: str


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see the module docstring for the rules)."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0 * 255.0
        elif mode == "I":
            # 32-bit integer images are usually 16-bit data promoted by PIL (PNG 16-bit grey).
            arr = arr / 65535.0 * 255.0 if arr.max(initial=0) > 255 else arr
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an RGB image, or raise :class:`ImageLoadError`."""
    path = str(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageLoadError(path, "zero-byte file")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        if max_pixels != old_limit:  # a global in PIL: only touched when the caller asks for another limit
            Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; we refuse anything above the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as fh:
                data = fh.read()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return to_rgb(img).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(path, f"image too large (decompression-bomb limit {max_pixels} px): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated data as OSError("image file is truncated ...").
        raise ImageLoadError(path, f"corrupt or truncated image: {exc}") from None
    finally:
        if Image.MAX_IMAGE_PIXELS != old_limit:
            Image.MAX_IMAGE_PIXELS = old_limit
