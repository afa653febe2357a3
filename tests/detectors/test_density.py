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


def _planted(seed=0, n_per=600, d=32):
    """Broad classes around 8 centres and a tight group of 40 near one of them (an SSL trigger cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    x = np.concatenate([centres[i] + 0.6 * rng.normal(size=(n_per, d)) for i in range(8)])
    tight = centres[0] + 0.3 * rng.normal(size=d) + 0.02 * rng.normal(size=(40, d))
    return np.concatenate([x, tight]).astype(np.float32), np.r_[np.zeros(len(x), bool), np.ones(40, bool)]


def test_a_read_only_memmap_gives_the_same_distances(tmp_path):
    emb, _ = _planted(n_per=700)  # 5,640 rows: normalised and searched in blocks
    np.save(tmp_path / "e.npy", emb)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    np.testing.assert_array_equal(knn_distance(mapped, 10), knn_distance(emb, 10))
    np.testing.assert_array_equal(knn_distance(mapped, 10, exact_max=0), knn_distance(emb, 10, exact_max=0))
    assert np.array_equal(np.load(tmp_path / "e.npy"), emb)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_approximate_index_agrees_with_the_exact_search(seed):
    """Forced IVF path (exact_max=0) on a planted corpus: the tight group fills the top ranks as with the
    exact search, no distance is below the exact one (a missed neighbour can only lengthen it), and most
    are equal."""
    emb, tight = _planted(seed)
    exact = knn_distance(emb, 10)
    approx = knn_distance(emb, 10, exact_max=0, seed=seed)
    assert np.all(approx >= exact - 1e-5)
    assert np.mean(np.abs(approx - exact) < 1e-5) > 0.9
    assert tight[np.argsort(approx)[:40]].all() and tight[np.argsort(exact)[:40]].all()
    # one list probed of many: rows near a list's edge miss neighbours, the tight group still ranks first
    coarse = knn_distance(emb, 10, exact_max=0, nlist=64, nprobe=1, seed=seed)
    assert np.all(coarse >= exact - 1e-5) and tight[np.argsort(coarse)[:40]].all()


def test_the_approximate_index_probes_more_lists_when_short():
    """With tiny lists the first probe finds fewer than k+1 rows; more lists are probed, no row is left
    without its k-th neighbour."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 8)).astype(np.float32)
    d = knn_distance(emb, 20, exact_max=0, nlist=40, nprobe=1)
    assert np.isfinite(d).all() and d.max() <= 2.0
    np.testing.assert_allclose(d, knn_distance(emb, 20), atol=0.35)
