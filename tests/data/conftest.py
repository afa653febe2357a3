from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sslguard.data import ArrayDataset


def make_toy(n_classes: int = 4, per_class: int = 12, size: int = 32, seed: int = 0) -> ArrayDataset:
    """Random images with mid-range values (so additive triggers do not clip), keys that are not positions."""
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    images = rng.integers(40, 216, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.tile(np.arange(n_classes), per_class)
    keys = 1000 + 3 * np.arange(n)  # keys != positions: catches code that confuses the two
    return ArrayDataset(images, labels, [f"c{i}" for i in range(n_classes)], keys=keys)


@pytest.fixture
def toy() -> ArrayDataset:
    return make_toy()


@pytest.fixture
def trigger_png(tmp_path):
    """An 8x8 RGB PNG with distinct colours in every pixel; returns (path, array)."""
    arr = np.random.default_rng(5).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    path = tmp_path / "trigger.png"
    Image.fromarray(arr, mode="RGB").save(path)
    return path, arr
