"""User trigger files are used as given at the size asked; default triggers are seeded; property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sslguard.data import ImageLoadError, poison_dataset
from sslguard.data.attacks import build_attack
from sslguard.data.attacks.triggers import grid_pattern, load_trigger, noise_pattern, resize_rgb
from tests.data.conftest import make_toy


@pytest.mark.parametrize("name", ["htba", "badnets"])
def test_trigger_png_is_pasted_as_given(name, toy, trigger_png):
    path, arr = trigger_png
    attack = build_attack(name, target=0, rate=1.0, seed=0, trigger_path=str(path), trigger_size=8)
    pds, man = poison_dataset(toy, attack)
    assert man.attack_params["trigger_path"] == str(path)
    for key, rec in man.records.items():
        p = int(toy.positions_of([key])[0])
        x, y, w, h = rec.location
        assert (w, h) == (8, 8)
        np.testing.assert_array_equal(pds.load_array(p)[y:y + h, x:x + w], arr)


def test_trigger_png_is_resized_to_the_size_asked(toy, trigger_png):
    path, arr = trigger_png
    pds, man = poison_dataset(toy, build_attack("htba", target=0, rate=0.5, trigger_path=str(path), trigger_size=16))
    big = np.repeat(np.repeat(arr, 2, axis=0), 2, axis=1)  # enlarging is nearest neighbour: exact colours
    for key, rec in man.records.items():
        x, y, w, h = rec.location
        assert (w, h) == (16, 16)
        np.testing.assert_array_equal(pds.load_array(int(toy.positions_of([key])[0]))[y:y + h, x:x + w], big)
    small = build_attack("badnets", trigger_path=str(path), trigger_size=4).patch(4, 4)
    assert small.shape == (4, 4, 3)
    np.testing.assert_array_equal(small, np.asarray(Image.fromarray(arr).resize((4, 4), Image.Resampling.LANCZOS)))


def test_blend_with_trigger_png_and_alpha_one_is_the_trigger(tmp_path, toy):
    arr = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "t.png")
    for name in ("blend", "blend_supervised"):
        attack = build_attack(name, alpha=1.0, trigger_path=str(tmp_path / "t.png"))
        np.testing.assert_array_equal(attack.apply(toy.load_array(0), {}), arr)


def test_label_consistent_sticker_from_png(toy, trigger_png):
    path, arr = trigger_png
    attack = build_attack("label_consistent", target=0, rate=0.5, trigger_path=str(path), trigger_size=8, amplitude=40)
    img = toy.load_array(0)
    out = attack.apply(img, attack.plan(img.shape, np.random.default_rng(0)))
    sticker = 40 * (2 * arr.astype(float) / 255.0 - 1)
    expected = np.clip(np.rint(img[:8, :8].astype(float) + sticker), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[:8, :8], expected)  # top-left corner: the pattern unmirrored
    np.testing.assert_array_equal(out[8:24], img[8:24])


def test_rgba_trigger_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    t = load_trigger(tmp_path / "a.png", 4, 4)
    np.testing.assert_array_equal(t[:2], np.broadcast_to([200, 0, 0], (2, 4, 3)))
    np.testing.assert_array_equal(t[2:], np.full((2, 4, 3), 255))


def test_unreadable_trigger_fails_at_construction(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="bad.png"):
        build_attack("htba", trigger_path=str(tmp_path / "bad.png"))
    with pytest.raises(ImageLoadError, match="missing.png"):
        build_attack("badnets", trigger_path=str(tmp_path / "missing.png"))


def test_default_triggers_are_seeded():
    np.testing.assert_array_equal(grid_pattern(3, 8, 8), grid_pattern(3, 8, 8))
    assert not np.array_equal(grid_pattern(3, 8, 8), grid_pattern(4, 8, 8))
    g = grid_pattern(3, 8, 8)
    np.testing.assert_array_equal(g[::2, ::2], grid_pattern(3, 4, 4))  # a 4x4 colour grid at any size
    np.testing.assert_array_equal(noise_pattern(1, 32, 32), noise_pattern(1, 32, 32))
    assert build_attack("htba", seed=5).trigger_seed == 5
    assert build_attack("htba", seed=5, trigger_seed=9).trigger_seed == 9


def test_resize_keeps_an_image_of_the_right_size_byte_identical():
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_rgb(Image.fromarray(arr), 7, 5), arr)


TOY = make_toy(n_classes=3, per_class=10)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["htba", "badnets", "label_consistent"]), rate=st.floats(0.0, 1.0),
       target=st.integers(0, 2), seed=st.integers(0, 2**31 - 1), size_fraction=st.floats(0.05, 0.45),
       rate_of=st.sampled_from(["target", "dataset"]))
def test_property_count_and_determinism(name, rate, target, seed, size_fraction, rate_of):
    # 3 classes x 10: rate_of="dataset" can ask for more than a pool holds; that must be refused, not clipped.
    kw = dict(target=target, rate=rate, rate_of=rate_of, seed=seed, size_fraction=size_fraction)
    attack = build_attack(name, **kw)
    base = 10 if rate_of == "target" else 30
    pool = 20 if attack.family == "supervised" else 10
    n = int(round(rate * base))
    if n > pool:
        with pytest.raises(ValueError):
            poison_dataset(TOY, attack)
        return
    pds, man = poison_dataset(TOY, attack)
    assert man.n_poisoned == n
    pds2, man2 = poison_dataset(TOY, build_attack(name, **kw))
    assert man2.to_csv_text() == man.to_csv_text()
    for p in np.flatnonzero(pds.poisoned_mask):
        assert pds.load_array(p).tobytes() == pds2.load_array(p).tobytes()
    for rec in man.records.values():
        if rec.location is not None:
            x, y, w, h = rec.location
            assert 0 <= x and x + w <= 32 and 0 <= y and y + h <= 32
