"""Odd image files: converted to RGB, or refused with a reason (skip) / ImageLoadError (raise)."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from sslguard.data import ImageFolderDataset, ImageLoadError, load_rgb


def _write_odd_files(folder):
    """One file of each awkward kind; returns {name: expected outcome}."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (6, 5), 77).save(folder / "grey.png")
    rgba = Image.new("RGBA", (6, 5), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: must come out white, not black
    rgba.save(folder / "rgba.png")
    pal = Image.new("RGB", (6, 5), (200, 30, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(folder / "palette.png")
    Image.new("CMYK", (6, 5), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((5, 6), 65535 // 2, np.uint16)).save(folder / "deep16.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_bytes(b"these are not pixels\n" * 10)
    return {"truncated.png": "truncated", "empty.jpg": "zero-byte", "notes.jpg": "not an image"}


def test_modes_convert_to_rgb(tmp_path):
    _write_odd_files(tmp_path)
    grey = np.asarray(load_rgb(tmp_path / "grey.png"))
    assert grey.shape == (5, 6, 3) and grey.dtype == np.uint8 and (grey == 77).all()
    rgba = np.asarray(load_rgb(tmp_path / "rgba.png"))
    assert tuple(rgba[0, 0]) == (255, 255, 255) and tuple(rgba[1, 1]) == (10, 20, 30)
    pal = np.asarray(load_rgb(tmp_path / "palette.png"))
    assert tuple(pal[2, 2]) == (200, 30, 40)
    cmyk = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))
    assert cmyk.shape == (5, 6, 3) and cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 60  # C=0, M=Y=255: red
    deep = np.asarray(load_rgb(tmp_path / "deep16.png"))
    assert deep.shape == (5, 6, 3) and np.abs(deep.astype(int) - 127).max() <= 1  # scaled, not truncated to 255


def test_transparent_palette_converts(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "tpal.png", transparency=0)
    arr = np.asarray(load_rgb(tmp_path / "tpal.png"))
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[3, 3]) == (9, 99, 199)


@pytest.mark.parametrize("name,reason", [("truncated.png", "truncated"), ("empty.jpg", "zero-byte"),
                                         ("notes.jpg", "not an image")])
def test_bad_files_raise_with_reason(tmp_path, name, reason):
    _write_odd_files(tmp_path)
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_rgb(tmp_path / name)
    assert info.value.path.endswith(name)


def test_folder_skips_bad_files_with_reasons(tmp_path):
    bad = _write_odd_files(tmp_path / "root" / "odd")
    (tmp_path / "root" / "plain").mkdir()
    Image.new("RGB", (6, 5), (1, 2, 3)).save(tmp_path / "root" / "plain" / "ok.png")
    ds = ImageFolderDataset(tmp_path / "root", num_workers=1, progress=False)
    assert ds.classes == ["odd", "plain"]
    kept = sorted(p.split("/")[-1] for p in ds.all_paths())
    assert kept == ["cmyk.jpg", "deep16.png", "grey.png", "ok.png", "palette.png", "rgba.png"]
    skipped = {s.path.split("/")[-1]: s.reason for s in ds.skipped}
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert reason in skipped[name]
    np.testing.assert_array_equal(ds.keys, np.arange(6))
    assert ds.labels.tolist() == [0, 0, 0, 0, 0, 1]
    for i in range(len(ds)):
        img, label, key = ds[i]
        assert img.mode == "RGB" and key == i


@pytest.mark.parametrize("name", ["truncated.png", "empty.jpg", "notes.jpg"])
def test_folder_on_error_raise_names_the_file(tmp_path, name):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a" / "good.png")
    _write_odd_files(tmp_path / "src")
    (root / "a" / name).write_bytes((tmp_path / "src" / name).read_bytes())
    with pytest.raises(ImageLoadError) as info:
        ImageFolderDataset(root, on_error="raise", num_workers=1, progress=False)
    assert info.value.path.endswith(name)


def test_header_check_catches_zero_byte_and_non_images(tmp_path):
    bad = _write_odd_files(tmp_path / "flat")
    ds = ImageFolderDataset(tmp_path / "flat", check="header", num_workers=1, progress=False)
    skipped = {s.path.split("/")[-1] for s in ds.skipped}
    assert {"empty.jpg", "notes.jpg"} <= skipped <= set(bad)


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        Image.new("RGB", (4, 4), (i, i, i)).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, num_workers=1, progress=False)
    assert ds.labels.tolist() == [-1, -1, -1] and not ds.has_labels and ds.classes == []
    assert ds[2][1] == -1


def test_symlink_loop_does_not_hang(tmp_path):
    cls = tmp_path / "root" / "a"
    (cls / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(cls / "x.png")
    Image.new("RGB", (4, 4)).save(cls / "sub" / "y.png")
    (cls / "sub" / "back").symlink_to(cls, target_is_directory=True)
    result = {}

    def build():
        result["ds"] = ImageFolderDataset(tmp_path / "root", num_workers=1, progress=False)

    t = threading.Thread(target=build, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "ImageFolderDataset looped on a symlink cycle"
    assert sorted(p.split("/")[-1] for p in result["ds"].all_paths()) == ["x.png", "y.png"]


def test_exif_rotated_image_is_upright(tmp_path):
    # Stored 16 wide x 8 tall, left half red; orientation 6 = "rotate 90 degrees clockwise to view".
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    up = np.asarray(load_rgb(tmp_path / "rot.jpg"))
    assert up.shape == (16, 8, 3)  # now tall
    assert up[2, 4, 0] > 200 and up[2, 4, 2] < 60  # the left (red) half is now on top
    assert up[13, 4, 2] > 200 and up[13, 4, 0] < 60
