"""The shifted-trusted-set benchmark's helpers (no training): the image shifts and the rules it compares."""

import numpy as np
import pytest

from benchmarks.classifier_shift import RULES, SHIFTS, main, shifted
from sslguard.data.datasets import ArrayDataset


def _digits():
    x = np.zeros((4, 8, 8, 3), np.uint8)
    x[:, 2:6, 3:5] = 200  # a bright stroke on black
    return ArrayDataset(x, [0, 1, 0, 1], ["a", "b"], keys=np.arange(10, 14))


@pytest.mark.parametrize("kind", SHIFTS)
def test_shifts_keep_identity_and_change_pixels_as_named(kind):
    ds = _digits()
    out = shifted(ds, kind)
    assert out.images.shape == ds.images.shape and out.images.dtype == np.uint8
    assert np.array_equal(out.keys, ds.keys) and np.array_equal(out.labels, ds.labels)
    stroke, background = out.images[:, 3, 3, 0], out.images[:, 0, 0, 0]
    if kind == "none":
        assert out is ds
    elif kind == "darken":
        assert (stroke == 120).all() and (background == 0).all()
    elif kind == "brighten":
        assert (stroke == 214).all() and (background == 64).all()
    elif kind == "thicken":
        assert (out.images > 0).sum() > (ds.images > 0).sum()
    elif kind == "blur":
        assert 0 < out.images[0, 1, 3, 0] < 200  # the stroke's edge spreads


def test_rules_differ_only_in_the_decision():
    assert RULES["new"] == {"cluster": {}, "critical_layer": {}}  # the defaults
    assert RULES["old"]["cluster"] == {"class_test": "none", "reference_tolerance": 0.25}
    with pytest.raises(ValueError, match="unknown shift"):
        shifted(_digits(), "rotate")


def test_missing_mnist_is_one_line_and_exit_code_1(tmp_path, capsys):
    assert main(["--mnist", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 1
    assert "MNIST test files not found" in capsys.readouterr().err and not (tmp_path / "x.md").exists()
