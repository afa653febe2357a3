"""A deliberately messy image folder, with the outcome each file must have.

``build_messy_folder(root)`` writes one file (or link) per awkward case and returns a
:class:`MessyFolder` that says, for every candidate file, whether the dataset must keep it (converted to
RGB) or skip it, and with which reason. The end-to-end and report tests use it to check that nothing
is lost: every file is either a row or a listed skip.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# File names that need care: unicode (NFC), spaces, a leading dash, quotes and a comma (CSV).
UNICODE_NAME = "unicode \u732b caf\u00e9 \u2713.png"
SPACES_NAME = "  two  spaces , and 'quotes' .png"
DASH_NAME = "-starts-with-dash.png"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A small, well-formed PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def png_rgb16(width: int, height: int, value: int = 0x8000) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, which PIL opens as 8-bit RGB."""
    row = b"\0" + struct.pack(">H", value) * 3 * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(row * height))
            + png_chunk(b"IEND", b""))


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


@dataclass
class MessyFolder:
    root: Path
    good: dict[str, str] = field(default_factory=dict)  # relative path -> what it is
    bad: dict[str, str] = field(default_factory=dict)  # relative path -> expected substring of the reason
    ignored: dict[str, str] = field(default_factory=dict)  # relative path -> why it is not a candidate
    classes: list[str] = field(default_factory=list)
    duplicates: tuple[str, str] = ("", "")

    @property
    def candidates(self) -> set[str]:
        return set(self.good) | set(self.bad)

    def rel(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()


def build_messy_folder(root: Path, include_bomb: bool = True) -> MessyFolder:
    """Write the messy corpus under ``root`` (class-folder layout)."""
    m = MessyFolder(root=Path(root))
    cats, dogs, one, empty = (m.root / n for n in ("cats", "dogs", "single", "zz_empty_class"))
    for d in (cats, dogs, one, empty):
        d.mkdir(parents=True)
    m.classes = ["cats", "dogs", "single", "zz_empty_class"]

    def good(rel: str, what: str, data: bytes | None = None, img: Image.Image | None = None, **save) -> None:
        p = m.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            p.write_bytes(data)
        else:
            img.save(p, **save)
        m.good[rel] = what

    def bad(rel: str, reason: str, data: bytes) -> None:
        (m.root / rel).write_bytes(data)
        m.bad[rel] = reason

    # ---- converted to RGB
    good("cats/plain.png", "RGB PNG", img=Image.fromarray(noise(12, 10, 1)))
    good("cats/grey.png", "8-bit grey", img=Image.new("L", (9, 7), 77))
    good("cats/bilevel.png", "1-bit", img=Image.new("1", (9, 7), 1))
    good("cats/grey_alpha.png", "grey + alpha", img=Image.new("LA", (9, 7), (100, 128)))
    good("cats/rgba.png", "RGBA", img=Image.new("RGBA", (9, 7), (10, 20, 30, 0)))
    good("cats/palette.png", "palette", img=Image.fromarray(noise(8, 8, 2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8))
    good("cats/deep16.png", "16-bit grey", img=Image.fromarray(np.full((7, 9), 40000, np.uint16)))
    good("cats/rgb48.png", "16-bit-per-channel RGB", data=png_rgb16(9, 7))
    good("cats/cmyk.jpg", "CMYK JPEG", img=Image.new("CMYK", (9, 7), (0, 255, 255, 0)), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    good("cats/exif_rotated.jpg", "EXIF orientation 6", img=Image.fromarray(noise(8, 16, 3)), exif=exif, quality=95)
    good("cats/float.tiff", "32-bit float TIFF", img=Image.fromarray(np.linspace(0, 1, 63, dtype=np.float32).reshape(7, 9), mode="F"))
    frames = [Image.new("P", (9, 7), i) for i in range(3)]
    (cats / "animated.gif").parent.mkdir(exist_ok=True)
    frames[0].save(cats / "animated.gif", save_all=True, append_images=frames[1:])
    m.good["cats/animated.gif"] = "animated GIF (first frame)"
    good("cats/photo.webp", "WebP", img=Image.fromarray(noise(9, 9, 4)))
    good("cats/bitmap.bmp", "BMP", img=Image.fromarray(noise(9, 9, 15)))
    good("cats/jpeg_named.png", "JPEG bytes behind a .png name", data=encoded(noise(10, 10, 5), "JPEG"))
    good("cats/UPPER.PNG", "upper-case extension", img=Image.fromarray(noise(6, 6, 6)))
    good("cats/tiny.png", "1x1 pixel", img=Image.new("RGB", (1, 1), (5, 6, 7)))
    good("cats/strip.png", "5000x1 strip (extreme aspect ratio)", img=Image.new("RGB", (5000, 1), (9, 9, 9)))
    dup = encoded(noise(10, 10, 7), "PNG")
    good("dogs/dup_a.png", "duplicate bytes (1 of 2)", data=dup)
    good("dogs/dup_b.png", "duplicate bytes (2 of 2)", data=dup)
    m.duplicates = ("dogs/dup_a.png", "dogs/dup_b.png")
    good(f"dogs/{UNICODE_NAME}", "unicode name", img=Image.fromarray(noise(8, 8, 8)))
    good(f"dogs/{SPACES_NAME}", "spaces, comma and quotes in the name", img=Image.fromarray(noise(8, 8, 9)))
    good(f"dogs/{DASH_NAME}", "name starting with a dash", img=Image.fromarray(noise(8, 8, 10)))
    good("dogs/nested/deeper/inner.png", "nested sub-folder", img=Image.fromarray(noise(8, 8, 11)))
    good("single/only.png", "the one image of its class", img=Image.fromarray(noise(8, 8, 12)))

    # ---- skipped with a reason
    png = encoded(noise(32, 32, 13), "PNG")
    jpg = encoded(noise(32, 32, 14), "JPEG", quality=90)
    bad("dogs/truncated.png", "truncated", png[: len(png) // 2])
    bad("dogs/truncated.jpg", "truncated", jpg[: len(jpg) // 2])
    bad("dogs/header_only.jpg", "not an image", jpg[:20])
    bad("dogs/zero.jpg", "zero-byte", b"")
    bad("dogs/zero.png", "zero-byte", b"")
    bad("dogs/notes.png", "not an image", b"these are not pixels\n" * 20)
    bad("dogs/page.jpg", "not an image", b"<html><body>404 not found</body></html>")
    bad("dogs/crc_broken.png", "corrupt", png[:60] + bytes(b ^ 0x5A for b in png[60:120]) + png[120:])
    if include_bomb:
        bad("dogs/bomb.png", "too large", png_claiming(100_000, 100_000))
    os.symlink("nowhere.png", dogs / "dangling.png")
    m.bad["dogs/dangling.png"] = "cannot read file"
    os.symlink("loop_b.png", dogs / "loop_a.png")
    os.symlink("loop_a.png", dogs / "loop_b.png")
    m.bad["dogs/loop_a.png"] = "cannot read file"
    m.bad["dogs/loop_b.png"] = "cannot read file"
    bad("dogs/line\nbreak.png", "line break", png)

    # ---- not candidates (documented): loops are not followed twice, hidden and non-image files ignored
    os.symlink("..", dogs / "nested" / "back_to_dogs", target_is_directory=True)
    m.ignored["dogs/nested/back_to_dogs"] = "directory symlink loop (not followed again)"
    (empty / "README.txt").write_text("no images here")
    m.ignored["zz_empty_class/README.txt"] = "not an image extension"
    (cats / ".hidden.png").write_bytes(png)
    m.ignored["cats/.hidden.png"] = "hidden file"
    (m.root / ".git").mkdir()
    (m.root / ".git" / "x.png").write_bytes(png)
    m.ignored[".git/x.png"] = "hidden folder"
    return m
