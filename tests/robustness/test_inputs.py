"""Messy and hostile image files: each is converted, or skipped with a logged and listed reason, or
refused with an error naming the file. Complements tests/data/test_images.py (basic modes and the
three classic bad files) with the rest of docs/robustness.md's table."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from PIL import Image

from sslguard.data import ImageFolderDataset, ImageLoadError, load_rgb
from sslguard.data.transforms import ResizeUint8
from sslguard.sanitize import ManifestPathError, read_file_list, write_clean_manifest
from tests.robustness.messy import build_messy_folder, png_claiming, png_rgb16


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return build_messy_folder(tmp_path_factory.mktemp("messy") / "corpus")


def test_every_file_is_kept_or_skipped_with_its_reason(messy, caplog):
    with caplog.at_level(logging.WARNING, logger="sslguard.data.datasets"):
        ds = ImageFolderDataset(messy.root, num_workers=2, progress=False)
    kept = [messy.rel(p) for p in ds.all_paths()]
    skipped = {messy.rel(s.path): s.reason for s in ds.skipped}
    assert sorted(kept) == sorted(messy.good)
    assert set(skipped) == set(messy.bad)
    for rel, reason in messy.bad.items():
        assert reason in skipped[rel], (rel, skipped[rel])
    assert len(kept) + len(skipped) == len(messy.candidates)  # nothing lost
    assert not set(kept) & set(skipped)
    # every skip, the empty class and the symlink loop are in the log, by name
    text = caplog.text
    for rel in messy.bad:
        assert f"skipped {messy.root / rel}" in text
    assert "zz_empty_class holds no images" in text and "symlink loop" in text
    # classes: the empty one keeps its id (torchvision's ImageFolder numbering), the single one has one image
    assert ds.classes == messy.classes
    counts = np.bincount(ds.labels, minlength=len(ds.classes))
    assert counts[ds.classes.index("single")] == 1 and counts[ds.classes.index("zz_empty_class")] == 0
    np.testing.assert_array_equal(ds.keys, np.arange(len(ds)))
    for i in range(len(ds)):
        img, label, key = ds[i]
        arr = np.asarray(img)
        assert img.mode == "RGB" and arr.dtype == np.uint8 and arr.ndim == 3 and key == i
    # duplicates: two rows, two keys, the same pixels
    a, b = (kept.index(r) for r in messy.duplicates)
    assert a != b and np.array_equal(ds.load_array(a), ds.load_array(b))


def test_converted_pixels_are_right(messy):
    at = lambda rel: np.asarray(load_rgb(messy.root / rel))  # noqa: E731
    assert (at("cats/rgb48.png") == 128).all()  # 0x8000 of 0xFFFF
    assert (at("cats/deep16.png") == round(40000 / 65535 * 255)).all()
    assert (at("cats/grey_alpha.png") == round(100 * 128 / 255 + 255 * 127 / 255)).all()  # over white
    assert (at("cats/rgba.png") == 255).all()  # fully transparent -> white, not the stored colour
    assert (at("cats/bilevel.png") == 255).all()
    assert at("cats/exif_rotated.jpg").shape == (16, 8, 3)  # stored 16 wide, shown upright
    assert at("cats/animated.gif").shape == (7, 9, 3)
    f = at("cats/float.tiff")
    assert f.min() == 0 and f.max() == 255  # float data stretched to the 8-bit range


@pytest.mark.parametrize("rel", ["dogs/bomb.png", "dogs/truncated.jpg", "dogs/crc_broken.png", "dogs/dangling.png",
                                 "dogs/loop_a.png", "dogs/header_only.jpg", "dogs/line\nbreak.png"])
def test_on_error_raise_names_the_file(tmp_path, messy, rel):
    root = tmp_path / "one"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a" / "good.png")
    src = messy.root / rel
    dst = root / "a" / src.name
    if src.is_symlink():  # copy the link itself (relative target), and its partner for the loop
        for link in [src] + ([messy.root / "dogs" / "loop_b.png"] if "loop" in rel else []):
            (root / "a" / link.name).symlink_to(link.readlink())
    else:
        dst.write_bytes(src.read_bytes())
    with pytest.raises(ImageLoadError) as info:
        ImageFolderDataset(root, on_error="raise", num_workers=1, progress=False)
    assert info.value.path == str(dst)  # the first bad file in sorted order
    assert messy.bad[rel] in info.value.reason and str(info.value) == f"{dst}: {info.value.reason}"


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_claiming(200_000, 200_000))  # 4e10 px, ~120 GB as RGB; the file is ~150 bytes
    t0 = time.perf_counter()
    with pytest.raises(ImageLoadError, match="too large") as info:
        load_rgb(p)
    assert time.perf_counter() - t0 < 5 and info.value.path == str(p)
    # header-only checking catches it too, and so does a small max_pixels on an honest image
    (tmp_path / "c").mkdir()
    p.rename(tmp_path / "c" / "bomb.png")
    Image.new("RGB", (30, 20)).save(tmp_path / "c" / "big.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "c" / "ok.png")
    for check in ("header", "decode"):
        ds = ImageFolderDataset(tmp_path / "c", check=check, max_pixels=500, num_workers=1, progress=False)
        assert [s.path.rsplit("/", 1)[1] for s in ds.skipped] == ["big.png", "bomb.png"]
        assert all("too large" in s.reason for s in ds.skipped) and len(ds) == 1
    # the limit is restored for everyone else (PIL keeps it in a global)
    assert Image.MAX_IMAGE_PIXELS == pytest.approx(89478485, rel=0.01)


def test_extreme_aspect_ratio_is_resized_in_bounded_memory():
    """A 1 x 2,000,000 strip is a small PNG; scaled to 32 px high before cropping it would take ~6 GB."""
    strip = Image.new("RGB", (2_000_000, 1), (9, 8, 7))
    t0 = time.perf_counter()
    out = ResizeUint8(32)(strip)
    assert time.perf_counter() - t0 < 2
    assert tuple(out.shape) == (3, 32, 32) and (out == torch_tensor([9, 8, 7])).all()
    tall = ResizeUint8(16)(Image.new("RGB", (1, 500_000), (1, 2, 3)))
    assert tuple(tall.shape) == (3, 16, 16)
    # ordinary aspect ratios are resized exactly as before (shorter side to size, centre crop)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8))
    ref = img.resize((75, 32), Image.BICUBIC).crop((21, 0, 53, 32))
    assert np.array_equal(ResizeUint8(32)(img).permute(1, 2, 0).numpy(), np.asarray(ref))


def torch_tensor(v):
    import torch

    return torch.tensor(v, dtype=torch.uint8).view(3, 1, 1)


def test_file_that_vanishes_after_the_scan_is_an_error_naming_it(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, num_workers=1, progress=False)
    (tmp_path / "a" / "1.png").unlink()
    (tmp_path / "a" / "2.png").write_bytes(b"")
    assert ds.load_array(0).shape == (4, 4, 3)
    with pytest.raises(ImageLoadError, match=r"1\.png: cannot read file"):
        ds[1]
    with pytest.raises(ImageLoadError, match=r"2\.png: zero-byte"):
        ds[2]


def test_all_files_unreadable_is_one_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "y.jpg").write_bytes(b"nope")
    with pytest.raises(ImageLoadError, match="no readable images"):
        ImageFolderDataset(tmp_path, num_workers=1, progress=False)
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "b", progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderDataset(tmp_path / "missing", progress=False)


def test_line_break_in_a_name_cannot_smuggle_a_flagged_file_back(tmp_path):
    """Flat folder: 'z\\npoison.png' would write the line 'poison.png' into the clean manifest."""
    png = png_rgb16(4, 4)
    for name in ("a.png", "poison.png", "z\npoison.png"):
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / name).write_bytes(png)
    ds = ImageFolderDataset(tmp_path / "src", num_workers=1, progress=False)
    assert [s.path for s in ds.skipped] == [str(tmp_path / "src" / "z\npoison.png")]
    poison = [i for i, p in enumerate(ds.all_paths()) if p.endswith("/poison.png")]
    out = write_clean_manifest(tmp_path / "run", ds, flagged_keys=ds.keys[poison])
    assert [p.name for p in read_file_list(out.clean_manifest)] == ["a.png"]
    # the writer refuses such a name from any other dataset too
    from sslguard.data import ArrayDataset

    arr = ArrayDataset(np.zeros((2, 2, 2, 3), np.uint8), [0, 0], ["x"], paths=[str(tmp_path / "a.png"), str(tmp_path / "b\nc.png")])
    with pytest.raises(ValueError, match="line break"):
        write_clean_manifest(tmp_path / "run2", arr, flagged_keys=[])


def test_symlink_out_of_the_root_needs_explicit_permission_to_read_back(tmp_path):
    """A folder may link to images elsewhere; the clean manifest then names them by absolute path, and
    reading it back refuses them unless allow_outside=True (a manifest must not reach outside its root)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "far.png")
    root = tmp_path / "src" / "a"
    root.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "near.png")
    (root / "link.png").symlink_to(outside / "far.png")
    ds = ImageFolderDataset(tmp_path / "src", num_workers=1, progress=False)
    assert len(ds) == 2 and not ds.skipped
    out = write_clean_manifest(tmp_path / "run", ds, flagged_keys=[])
    with pytest.raises(ManifestPathError, match="points outside"):
        read_file_list(out.clean_manifest)
    files = read_file_list(out.clean_manifest, allow_outside=True)
    assert sorted(f.name for f in files) == ["far.png", "near.png"]
