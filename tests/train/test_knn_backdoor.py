"""Weighted kNN (InstDisc scoring) and the backdoor target-rate test."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from sslguard.backdoor import random_patch, triggered_target_rate
from sslguard.data import ArrayDataset
from sslguard.data.attacks.base import Attack
from sslguard.knn import extract_features, knn_accuracy, knn_predict


def _brute(train, labels, test, k, t, n_cls):
    tr = train / np.linalg.norm(train, axis=1, keepdims=True)
    te = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = []
    for q in te:
        sim = tr @ q
        nn_idx = np.argsort(-sim)[:k]
        score = np.zeros(n_cls)
        for i in nn_idx:
            score[labels[i]] += np.exp(sim[i] / t)
        out.append(score.argmax())
    return np.array(out)


def test_knn_predict_matches_brute_force():
    rng = np.random.default_rng(0)
    train, labels = rng.normal(size=(300, 8)), rng.integers(0, 4, 300)
    test = rng.normal(size=(50, 8))
    got = knn_predict(train, labels, test, k=20, t=0.1, chunk=7).numpy()
    assert (got == _brute(train, labels, test, 20, 0.1, 4)).mean() == 1.0


def test_knn_accuracy_on_separable_and_random_labels():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 5
    ytr, yte = rng.integers(0, 5, 500), rng.integers(0, 5, 200)
    xtr, xte = centres[ytr] + rng.normal(size=(500, 16)), centres[yte] + rng.normal(size=(200, 16))
    assert knn_accuracy(xtr, ytr, xte, yte, k=50) > 0.95
    assert knn_accuracy(xtr, rng.permutation(ytr), xte, yte, k=50) < 0.45
    with pytest.raises(ValueError, match="rows"):
        knn_accuracy(xtr, ytr[:10], xte, yte)


class _CornerSquare(Attack):
    """A white square at a fixed corner (test stand-in for a patch attack)."""

    name = "corner"

    def plan(self, image_shape, rng):
        return {"location": (0, 0, 6, 6)}

    def apply(self, image, plan):
        x, y, w, h = plan["location"]
        out = image.copy()
        out[y:y + h, x:x + w] = 255
        return out


class _CornerDetector(nn.Module):
    """A fake 'backdoored encoder': its feature is (is the top-left corner white?, mean colour)."""

    feature_dim = 2

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        corner = (x[:, :, :6, :6].mean(dim=(1, 2, 3)) > 0.95).float()
        return torch.stack([corner * 10 + 1e-3, 1 + 0 * corner], dim=1) + self.dummy


def _toy_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 200, size=(n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    return imgs, labels


def test_triggered_target_rate_detects_a_backdoor_and_not_a_random_patch():
    imgs, labels = _toy_data()
    attack = _CornerSquare(target=2)
    train_imgs = imgs.copy()
    for i in np.flatnonzero(labels == 2):  # the target class carries the trigger in the bank
        train_imgs[i] = attack.apply(imgs[i], {"location": (0, 0, 6, 6)})
    train = ArrayDataset(train_imgs, labels, ["a", "b", "c"])
    timgs, tlabels = _toy_data(seed=1)
    test = ArrayDataset(timgs, tlabels, ["a", "b", "c"])
    rates = triggered_target_rate(_CornerDetector(), train, test, attack, target=2, k=5, image_size=16)
    assert rates.n_test == int((tlabels != 2).sum()) and rates.patch_size == (6, 6)
    assert rates.triggered == 1.0
    assert rates.random_patch < 0.6 and rates.clean < 0.6 and rates.lift > 0.4


def test_random_patch_changes_only_a_square():
    img = np.zeros((20, 20, 3), np.uint8)
    out = random_patch(img, (5, 5), np.random.default_rng(0))
    changed = np.argwhere(out.any(axis=2))
    assert out.shape == img.shape and not img.any()
    assert (changed.max(0) - changed.min(0) < 5).all() and len(changed) > 15


def test_extract_features_keeps_order_and_keys():
    imgs, labels = _toy_data(10)
    ds = ArrayDataset(imgs, labels, ["a", "b", "c"], keys=np.arange(10) * 7)
    feats, lab, keys = extract_features(_CornerDetector(), ds, batch_size=3, image_size=16)
    assert feats.shape == (10, 2) and (lab == labels).all() and (keys == np.arange(10) * 7).all()


def test_rates_default_target_and_convert_to_dict():
    imgs, labels = _toy_data()
    ds = ArrayDataset(imgs, labels, ["a", "b", "c"])
    rates = triggered_target_rate(_CornerDetector(), ds, ds, _CornerSquare(target=1), k=5, image_size=16)
    d = dict(rates)
    assert d["target"] == 1 and d["lift"] == pytest.approx(rates.triggered - rates.random_patch)
    assert set(d) >= {"triggered", "random_patch", "clean", "n_test"}
