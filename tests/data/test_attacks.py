"""Every registered attack: selection, manifest, locality of the change, determinism, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslguard.data import ArrayDataset, PoisonManifest, PoisonedDataset, poison_dataset
from sslguard.data.attacks import ATTACKS, apply_trigger_batch, build_attack, list_attacks
from sslguard.data.attacks.ctrl import CTRL
from sslguard.data.attacks.triggers import CORNERS, grid_pattern
from tests.data.conftest import make_toy

ALL = ["badnets", "blend", "blend_supervised", "ctrl", "htba", "label_consistent", "sig", "wanet"]
SUPERVISED = {"badnets", "blend_supervised", "sig", "wanet"}
PATCH = {"htba", "badnets"}


def test_registry_lists_every_attack():
    assert list_attacks() == ALL
    assert {n for n in ALL if ATTACKS[n].family == "supervised"} == SUPERVISED
    assert ATTACKS["label_consistent"].family == "label_consistent"
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("nope")


def _diff_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=-1)


def _box_mask(shape, boxes) -> np.ndarray:
    m = np.zeros(shape[:2], bool)
    for x, y, w, h in boxes:
        m[y:y + h, x:x + w] = True
    return m


@pytest.mark.parametrize("name", ALL)
def test_manifest_marks_exactly_the_changed_images(name, toy):
    attack = build_attack(name, target=2, rate=0.5, seed=3)
    pds, man = poison_dataset(toy, attack)
    changed = np.array([not np.array_equal(pds.load_array(i), toy.load_array(i)) for i in range(len(toy))])
    np.testing.assert_array_equal(man.is_poisoned(toy.keys), changed)
    np.testing.assert_array_equal(pds.poisoned_mask, changed)
    assert set(man.poisoned_indices.tolist()) <= set(toy.keys.tolist())
    assert man.attack == name and man.target == 2 and man.seed == 3
    np.testing.assert_array_equal(man.keys, toy.keys)


@pytest.mark.parametrize("name", ALL)
def test_labels_flip_only_for_supervised(name, toy):
    pds, man = poison_dataset(toy, build_attack(name, target=1, rate=0.5, seed=0))
    poisoned = man.is_poisoned(toy.keys)
    if name in SUPERVISED:
        assert (toy.labels[poisoned] != 1).all()  # drawn from the other classes
        assert (pds.labels[poisoned] == 1).all()
        assert all(r.label == 1 and r.original_label != 1 for r in man.records.values())
    else:
        assert (toy.labels[poisoned] == 1).all()  # drawn from the target class
        np.testing.assert_array_equal(pds.labels, toy.labels)
        assert all(r.label == r.original_label == 1 for r in man.records.values())
    np.testing.assert_array_equal(pds.labels[~poisoned], toy.labels[~poisoned])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("rate_of,rate,expected", [("target", 0.5, 6), ("target", 1.0, 12), ("dataset", 0.125, 6),
                                                   ("dataset", 0.0, 0)])
def test_count_matches_rate(name, rate_of, rate, expected, toy):
    # 4 classes x 12 images: half the target class is 6, 1/8 of 48 is 6.
    _, man = poison_dataset(toy, build_attack(name, target=0, rate=rate, rate_of=rate_of, seed=1))
    assert man.n_poisoned == expected


def test_rate_beyond_the_pool_is_refused(toy):
    with pytest.raises(ValueError, match="eligible"):
        build_attack("htba", target=0, rate=0.5, rate_of="dataset").select(toy.labels)  # 24 asked, 12 eligible


@pytest.mark.parametrize("name", ALL)
def test_same_seed_gives_identical_images_and_manifest(name, toy):
    runs = [poison_dataset(toy, build_attack(name, target=3, rate=0.5, seed=7)) for _ in range(2)]
    (p1, m1), (p2, m2) = runs
    assert m1.to_csv_text() == m2.to_csv_text()
    assert m1.to_dict() == m2.to_dict()
    for i in range(len(toy)):
        assert p1.load_array(i).tobytes() == p2.load_array(i).tobytes()
    _, m3 = poison_dataset(toy, build_attack(name, target=3, rate=0.5, seed=8))
    assert not np.array_equal(m1.poisoned_indices, m3.poisoned_indices)


@pytest.mark.parametrize("name", ALL)
def test_manifest_round_trip_rebuilds_the_same_images(name, toy, tmp_path):
    attack = build_attack(name, target=1, rate=0.5, seed=2)
    pds, man = poison_dataset(toy, attack)
    csv_path, json_path = man.save(tmp_path)
    for path in (csv_path, json_path):
        loaded = PoisonManifest.load(path)
        assert loaded.to_csv_text() == man.to_csv_text()
        again = PoisonedDataset(toy, attack, loaded)
        for i in np.flatnonzero(pds.poisoned_mask):
            assert again.load_array(i).tobytes() == pds.load_array(i).tobytes()
    assert PoisonManifest.load(json_path).to_dict() == man.to_dict()


@pytest.mark.parametrize("name", sorted(PATCH))
def test_patch_attacks_change_only_the_patch(name, toy):
    pds, man = poison_dataset(toy, build_attack(name, target=0, rate=1.0, seed=4, size_fraction=0.25))
    attack = pds.attack
    for key, rec in man.records.items():
        p = int(toy.positions_of([key])[0])
        clean, bad = toy.load_array(p), pds.load_array(p)
        x, y, w, h = rec.location
        assert w == h == 8
        inside = _box_mask(clean.shape, [rec.location])
        assert bad[~inside].tobytes() == clean[~inside].tobytes()
        np.testing.assert_array_equal(bad[y:y + h, x:x + w], grid_pattern(attack.trigger_seed, w, h))


def test_htba_positions_vary_and_badnets_sits_in_its_corner(toy):
    _, man = poison_dataset(toy, build_attack("htba", target=0, rate=1.0, seed=0))
    assert len({r.location for r in man.records.values()}) > 1
    _, man = poison_dataset(toy, build_attack("badnets", target=0, rate=0.25, seed=0, trigger_size=3, margin=1))
    assert {r.location for r in man.records.values()} == {(28, 28, 3, 3)}
    _, man = poison_dataset(toy, build_attack("badnets", target=0, rate=0.25, seed=0, trigger_size=5, corner="top_left",
                                              margin=0))
    assert {r.location for r in man.records.values()} == {(0, 0, 5, 5)}


def test_label_consistent_without_model_changes_only_the_corners(toy):
    pds, man = poison_dataset(toy, build_attack("label_consistent", target=0, rate=1.0, seed=0, amplitude=32))
    for key, rec in man.records.items():
        p = int(toy.positions_of([key])[0])
        clean, bad = toy.load_array(p), pds.load_array(p)
        boxes = rec.params["boxes"]
        assert len(boxes) == 4 and all(b[2] == b[3] == 3 for b in boxes)
        inside = _box_mask(clean.shape, boxes)
        assert bad[~inside].tobytes() == clean[~inside].tobytes()
        d = bad.astype(int) - clean.astype(int)
        assert set(np.unique(d[inside]).tolist()) == {-32, 32}  # mid-range images: no clipping
        # Mirrored into each corner: the corner pixel itself is white (+amplitude) everywhere.
        assert d[0, 0, 0] == d[0, -1, 0] == d[-1, 0, 0] == d[-1, -1, 0] == 32


def test_blend_sig_ctrl_follow_their_formulas(toy):
    img = toy.load_array(0)
    f = img.astype(np.float64)
    blend = build_attack("blend", alpha=0.3, seed=0)
    expected = np.rint(0.7 * f + 0.3 * blend.trigger(32, 32).astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(blend.apply(img, {}), expected)
    sig = build_attack("sig", delta=20, frequency=6)
    v = 20 * np.sin(2 * np.pi * np.arange(32) * 6 / 32)
    np.testing.assert_array_equal(sig.apply(img, {}), np.rint(f + v[None, :, None]).astype(np.uint8))
    ctrl = build_attack("ctrl", magnitude=50.0)
    out = ctrl.apply(img, {})
    np.testing.assert_array_equal(out, np.rint(f + ctrl.pattern(32, 32)).astype(np.uint8))


def test_ctrl_trigger_lives_in_the_chosen_dct_coefficients_of_u_and_v():
    from scipy.fft import dctn

    ctrl = CTRL(magnitude=50.0, window_size=16, frequencies=[(7, 7), (15, 15)])
    pat = ctrl.pattern(32, 48)  # 2 x 3 blocks of 16
    yuv = pat @ np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]).T
    np.testing.assert_allclose(yuv[..., 0], 0, atol=1e-9)
    for c in (1, 2):
        for by in range(2):
            for bx in range(3):
                coef = dctn(yuv[by * 16:(by + 1) * 16, bx * 16:(bx + 1) * 16, c], norm="ortho")
                expected = np.zeros((16, 16))
                expected[7, 7] = expected[15, 15] = 50.0
                np.testing.assert_allclose(coef, expected, atol=1e-9)
    with pytest.raises(ValueError, match="frequencies"):
        CTRL(window_size=16, frequencies=[(16, 0)])


def test_wanet_field_is_fixed_and_moves_pixels_only():
    wanet = build_attack("wanet", seed=0, k=4, s=0.5)
    assert tuple(wanet.control_grid.shape) == (1, 2, 4, 4)
    flat = np.full((32, 32, 3), 123, np.uint8)
    np.testing.assert_array_equal(wanet.apply(flat, {}), flat)  # a warp of a constant image is that image
    ramp = np.repeat(np.repeat(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], 32, 0), 3, 2)
    warped = wanet.apply(ramp, {})
    assert not np.array_equal(warped, ramp)
    assert np.abs(warped.astype(int) - ramp.astype(int)).max() <= 16  # s=0.5 moves pixels by ~a pixel
    again = build_attack("wanet", seed=0)
    assert torch.equal(again.control_grid, wanet.control_grid)
    np.testing.assert_array_equal(again.apply(ramp, {}), warped)
    assert not torch.equal(build_attack("wanet", seed=1).control_grid, wanet.control_grid)
    batch = np.stack([ramp, flat, ramp[::-1]])
    np.testing.assert_array_equal(wanet.warp_batch(batch), np.stack([wanet.apply(b, {}) for b in batch]))


@pytest.mark.parametrize("name", ALL)
def test_apply_test_and_batch_helper(name, toy):
    attack = build_attack(name, target=0, seed=0)
    images = np.stack([toy.load_array(i) for i in range(6)])
    before = images.copy()
    out1 = apply_trigger_batch(attack, images, seed=11)
    out2 = apply_trigger_batch(attack, images, seed=11)
    np.testing.assert_array_equal(images, before)
    assert out1.dtype == np.uint8 and out1.shape == images.shape
    assert out1.tobytes() == out2.tobytes()
    assert all(not np.array_equal(a, b) for a, b in zip(out1, images))
    one = attack.apply_test(images[2], np.random.default_rng([11, 2, 2]))
    np.testing.assert_array_equal(out1[2], one)
    with pytest.raises(ValueError, match="uint8"):
        apply_trigger_batch(attack, images.astype(np.float32), seed=0)


class _Linear(torch.nn.Module):
    def __init__(self, size: int = 32, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * size * size, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_label_consistent_pgd_stays_in_epsilon_and_raises_the_loss(toy):
    model = _Linear()
    attack = build_attack("label_consistent", target=1, rate=0.5, seed=0, model=model, epsilon=8, steps=5,
                          amplitude=16, batch_size=4)
    pds, man = poison_dataset(toy, attack)
    assert len(attack.perturbed) == man.n_poisoned == 6 and set(attack.perturbed) == set(man.records)
    assert model.training  # the model's mode is restored
    for key, rec in man.records.items():
        p = int(toy.positions_of([key])[0])
        clean, bad = toy.load_array(p).astype(int), pds.load_array(p).astype(int)
        outside = ~_box_mask(clean.shape, rec.params["boxes"])
        d = np.abs(bad - clean)[outside]
        assert d.max() <= 8 and d.max() > 0
    # the adversarial part raises the classifier's loss on the true label
    keys = man.poisoned_indices
    clean = np.stack([toy.load_array(int(p)) for p in toy.positions_of(keys)])
    adv = np.stack([attack.perturbed[int(k)] for k in keys])

    def loss(x):
        t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
        return torch.nn.functional.cross_entropy(model(t), torch.full((len(x),), 1)).item()

    assert loss(adv) > loss(clean)
    # test time: the sticker alone, never the PGD image
    p0 = int(toy.positions_of(keys[:1])[0])
    np.testing.assert_array_equal(attack.apply_test(toy.load_array(p0)), attack.stamp(toy.load_array(p0), 16))
    # same seed, same model: same PGD images
    attack2 = build_attack("label_consistent", target=1, rate=0.5, seed=0, model=model, epsilon=8, steps=5,
                           amplitude=16, batch_size=3)
    pds2, man2 = poison_dataset(toy, attack2)
    assert man2.to_csv_text() == man.to_csv_text()
    for p in np.flatnonzero(pds.poisoned_mask):
        np.testing.assert_array_equal(pds2.load_array(p), pds.load_array(p))


@pytest.mark.parametrize("name,kwargs", [
    ("htba", {"size_fraction": 0.0}), ("htba", {"trigger_size": 0}), ("badnets", {"corner": "middle"}),
    ("blend", {"alpha": 0.0}), ("sig", {"delta": -1}), ("wanet", {"k": 1}), ("ctrl", {"channels": ["Q"]}),
    ("label_consistent", {"amplitude": 300}), ("label_consistent", {"model": "resnet"}),
    ("htba", {"rate": 1.5}), ("htba", {"rate_of": "class"}),
])
def test_bad_parameters_are_refused(name, kwargs):
    with pytest.raises((ValueError, TypeError)):
        build_attack(name, **kwargs)


def test_trigger_larger_than_image_is_refused():
    ds = make_toy(size=8)
    with pytest.raises(ValueError, match="does not fit"):
        poison_dataset(ds, build_attack("htba", target=0, rate=0.5, trigger_size=9))


def test_images_of_mixed_sizes_get_a_patch_that_fits():
    small = make_toy(size=16)
    _, man = poison_dataset(small, build_attack("htba", target=0, rate=1.0, size_fraction=0.5))
    assert all(r.location[2] == 8 and r.location[0] + 8 <= 16 for r in man.records.values())


def test_unlabeled_data_cannot_carry_a_target_class_attack():
    ds = make_toy()
    unlabeled = ArrayDataset(ds.images, np.full(len(ds), -1), [], keys=ds.keys)
    with pytest.raises(ValueError, match="no labels"):
        poison_dataset(unlabeled, build_attack("htba", target=0, rate=0.5))


def test_corner_names_are_the_documented_ones():
    assert CORNERS == ("top_left", "top_right", "bottom_left", "bottom_right")
