"""Embedding density (after Huang et al. 2025): a training-free ranking; the trigger cluster is tight."""

import numpy as np
import pytest

from sslguard.detectors import get_detector
from sslguard.detectors.density import knn_distance
from sslguard.metrics import detection_metrics


def test_knn_distance_is_the_kth_other_neighbour():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    d = knn_distance(x, 1)
    # rows 0 and 2 coincide (distance 0); row 3's nearest other is row 1 (cos 0.8); row 1's is row 3
    np.testing.assert_allclose(d, [0.0, 0.2, 0.0, 0.2], atol=1e-6)


class _Keys:
    def __init__(self, n):
        self.keys = np.arange(n)

    def __len__(self):
        return len(self.keys)


def test_a_tight_group_ranks_first_and_a_scattered_one_last():
    """A corpus of broad classes with a group mapped onto nearly one point (what an SSL encoder does to
    the images carrying a trigger it learned) and a group of scattered outliers: each direction ranks
    its own group first; nothing is flagged either way."""
    rng = np.random.default_rng(0)
    d = 32
    centres = rng.normal(size=(8, d))
    x = np.concatenate([centres[i] + 0.6 * rng.normal(size=(100, d)) for i in range(8)])
    tight = centres[0] + 0.3 * rng.normal(size=d) + 0.02 * rng.normal(size=(40, d))
    scattered = 3.0 * rng.normal(size=(20, d))
    emb = np.concatenate([x, tight, scattered])
    is_tight = np.r_[np.zeros(800, bool), np.ones(40, bool), np.zeros(20, bool)]
    is_scattered = np.r_[np.zeros(840, bool), np.ones(20, bool)]
    ds = _Keys(len(emb))
    r = get_detector("density")(dataset=ds, embeddings=emb)
    assert detection_metrics(r.scores, r.flagged, is_tight)["auroc"] > 0.99
    assert not r.flagged.any() and np.array_equal(r.flagged, r.scores > r.threshold)
    np.testing.assert_allclose(r.evidence["z_sparse"], -r.evidence["z_tight"])
    sparse = get_detector("density")(dataset=ds, embeddings=emb, direction="sparse")
    assert detection_metrics(sparse.scores, sparse.flagged, is_scattered)["auroc"] > 0.99
    with pytest.raises(ValueError, match="direction"):
        get_detector("density")(dataset=ds, embeddings=emb, direction="up")
    with pytest.raises(ValueError, match="embeddings"):
        get_detector("density")(dataset=ds, embeddings=emb[:5])
