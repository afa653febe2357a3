"""Digits, CIFAR-10 and subsets: shapes, keys as identities, seeded subsets."""

from __future__ import annotations

import numpy as np
import pytest

from sslguard.data import ArrayDataset, build_dataset, load_cifar10, load_digits_dataset, subset_per_class


def test_digits_shape_keys_and_split():
    train, test, everything = load_digits_dataset("train"), load_digits_dataset("test"), load_digits_dataset("all")
    for ds in (train, test):
        assert ds.images.shape[1:] == (32, 32, 3) and ds.images.dtype == np.uint8
        assert len(np.unique(ds.keys)) == len(ds)
        assert ds.has_labels and ds.num_classes == 10
    assert len(everything) == 1797
    assert not set(train.keys.tolist()) & set(test.keys.tolist())
    assert sorted(train.keys.tolist() + test.keys.tolist()) == list(range(1797))
    np.testing.assert_array_equal(everything.images[train.keys], train.images)  # a key names the same image
    assert abs(len(test) / 1797 - 0.2) < 0.01
    np.testing.assert_array_equal(load_digits_dataset("train").keys, train.keys)  # seeded
    with pytest.raises(ValueError, match="split"):
        load_digits_dataset("val")


def test_subset_per_class_is_seeded_and_keeps_keys(digits_train):
    a = subset_per_class(digits_train, 5, seed=1)
    b = subset_per_class(digits_train, 5, seed=1)
    c = subset_per_class(digits_train, 5, seed=2)
    np.testing.assert_array_equal(a.keys, b.keys)
    assert not np.array_equal(a.keys, c.keys)
    assert np.bincount(a.labels).tolist() == [5] * 10
    for i in range(len(a)):
        p = int(digits_train.positions_of([a.keys[i]])[0])
        np.testing.assert_array_equal(a.load_array(i), digits_train.load_array(p))
    with pytest.raises(ValueError):
        subset_per_class(digits_train, 0)


def test_positions_of_and_key_uniqueness():
    ds = ArrayDataset(np.zeros((3, 2, 2, 3), np.uint8), [0, 1, 0], ["a", "b"], keys=[10, 20, 30])
    np.testing.assert_array_equal(ds.positions_of([30, 10]), [2, 0])
    with pytest.raises(KeyError, match="99"):
        ds.positions_of([99])
    with pytest.raises(ValueError, match="unique"):
        ArrayDataset(np.zeros((2, 2, 2, 3), np.uint8), [0, 1], ["a", "b"], keys=[1, 1])


def test_cifar10_loader(cifar10_root):
    test = load_cifar10(cifar10_root, split="test")
    assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
    np.testing.assert_array_equal(test.keys, np.arange(10000))
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[0] == "airplane" and test.classes[9] == "truck"
    exact = np.load(cifar10_root / "cifar10-original-exact-subset.npz")
    np.testing.assert_array_equal(test.labels, exact["test_labels"].astype(np.int64))
    idx = exact["test_subset_indices"][:50]
    err = np.abs(test.images[idx].astype(int) - exact["test_subset_images"][:50].astype(int)).mean()
    assert err < 15  # JPEG copy (README: mean abs error ~6/255), in canonical order
    sub = subset_per_class(test, 20, seed=3)
    np.testing.assert_array_equal(sub.keys, subset_per_class(test, 20, seed=3).keys)
    assert np.bincount(sub.labels).tolist() == [20] * 10
    via_name = build_dataset("cifar10", split="test", root=str(cifar10_root), subset_per_class_n=20, seed=3)
    np.testing.assert_array_equal(via_name.keys, sub.keys)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(cifar10_root, split="val")


def test_cifar10_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10"):
        load_cifar10(tmp_path / "nowhere")
