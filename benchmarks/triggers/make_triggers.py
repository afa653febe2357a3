"""Draw the image triggers of ``benchmarks/generalization.md`` (three kinds the detectors were never tuned on).

    python benchmarks/triggers/make_triggers.py      # rewrites glyph.png, texture.png, logo.png beside this file

Each is a 16x16 RGB PNG drawn from code (no data, no font file), resized by the attack to its patch size
(``sslguard.data.attacks.triggers.load_trigger``):

- ``glyph.png``: a black letter "K" on yellow, strokes two pixels wide: a text glyph, sharp edges.
- ``texture.png``: one-pixel diagonal stripes in magenta and green: a fine texture, almost all of its
  energy at the highest frequency (a low-pass filter or a downscale wipes it out; a window mask does not).
- ``logo.png``: a disc with a smooth radial gradient, blue at its centre to orange at its rim, on white: a
  smooth logo with no sharp inner edge.

The default grid trigger (``grid_pattern``: a 4x4 grid of random colours) is the fourth kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 16


def glyph() -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:] = (250, 210, 20)
    ink = (10, 10, 10)
    img[2:14, 4:6] = ink  # the stem
    for i in range(6):  # the two arms, from the stem's middle out to the corners
        img[7 - i:9 - i, 6 + i:8 + i] = ink
        img[7 + i:9 + i, 6 + i:8 + i] = ink
    return img


def texture() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    on = (x + y) % 2 == 0
    return np.where(on[..., None], np.array([230, 20, 200], np.uint8), np.array([20, 200, 40], np.uint8))


def logo() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    r = np.hypot(x - SIZE / 2, y - SIZE / 2) / (SIZE / 2)
    t = np.clip(r / 0.9, 0.0, 1.0)[..., None]
    disc = (1 - t) * np.array([30, 60, 220]) + t * np.array([250, 140, 30])
    out = np.where((r <= 0.9)[..., None], disc, np.array([255, 255, 255]))
    return np.round(out).astype(np.uint8)


TRIGGERS = {"glyph": glyph, "texture": texture, "logo": logo}


def main() -> None:
    for name, draw in TRIGGERS.items():
        Image.fromarray(draw()).save(HERE / f"{name}.png")
        print(HERE / f"{name}.png")


if __name__ == "__main__":
    main()
