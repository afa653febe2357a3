import numpy as np
import pytest

from sslguard.cluster import ClusterResult, kmeans, l2_normalize


def _blobs(rng, n_per=50, k=4, d=16, spread=0.05):
    centers = l2_normalize(rng.normal(size=(k, d)))
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_recovers_blobs_and_is_deterministic(rng):
    x, y = _blobs(rng)
    a = kmeans(x, 4, seed=3)
    b = kmeans(x, 4, seed=3)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # every true blob maps to one cluster and every cluster to one blob
    pairs = set(zip(y.tolist(), a.assignments.tolist()))
    assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4
    assert a.k == 4 and a.spherical and a.sizes.sum() == len(x)
    # cosine similarities to the assigned centroid are what ``similarities`` says
    sims = a.similarities(x)
    np.testing.assert_allclose(sims[np.arange(len(x)), a.assignments], a.distances, atol=1e-5)
    np.testing.assert_array_equal(sims.argmax(1), a.assignments)


def test_euclidean_option_and_inertia(rng):
    x, _ = _blobs(rng, spread=0.01)
    r = kmeans(x * 10, 4, spherical=False, seed=0)
    assert not r.spherical
    sq = ((x * 10 - r.centroids[r.assignments]) ** 2).sum(1)
    np.testing.assert_allclose(r.distances, sq, rtol=1e-3, atol=1e-3)
    assert r.inertia == pytest.approx(float(sq.sum()), rel=1e-3)


def test_k_larger_than_n_is_a_clear_error(rng):
    x = rng.normal(size=(5, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="k=6 clusters asked for only 5"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="positive"):
        kmeans(x, 0)


def test_save_load_roundtrip(tmp_path, rng):
    x, _ = _blobs(rng, n_per=10)
    r = kmeans(x, 3, seed=1)
    path = r.save(tmp_path / "clusters.npz")
    back = ClusterResult.load(path)
    np.testing.assert_array_equal(back.assignments, r.assignments)
    np.testing.assert_array_equal(back.centroids, r.centroids)
    assert (back.k, back.spherical, back.seed) == (3, True, 1)
    assert back.inertia == pytest.approx(r.inertia)
    assert not list(tmp_path.glob(".clusters.npz.*"))  # no temporary file left behind


def _mapped(tmp_path, x, name="x.npy"):
    np.save(tmp_path / name, x)
    m = np.load(tmp_path / name, mmap_mode="r")
    assert not m.flags.writeable
    return m


def _same(a, b):
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.distances, b.distances)
    assert a.inertia == b.inertia


@pytest.mark.parametrize("spherical", [True, False])
def test_a_read_only_memmap_gives_the_in_memory_result(tmp_path, rng, spherical):
    """Every row (the default below sample_above) and the sampled, chunked path: a read-only memory map is
    read, never written, and gives exactly what the same rows in memory give."""
    x, _ = _blobs(rng, n_per=1700, k=5, d=16)
    m = _mapped(tmp_path, x)
    _same(kmeans(m, 5, seed=2, spherical=spherical), kmeans(x, 5, seed=2, spherical=spherical))
    small = dict(sample_above=400, chunk_rows=100)  # 8,500 rows: two blocks (chunk_rows rounds up to 4,096)
    _same(kmeans(m, 5, seed=2, spherical=spherical, **small), kmeans(x.astype(np.float64), 5, seed=2,
                                                                      spherical=spherical, **small))
    assert np.array_equal(np.load(tmp_path / "x.npy"), x)


def test_sampled_path_recovers_planted_clusters(rng):
    """Above sample_above, centroids are trained on a seeded sample (3,000 of 12,000 rows here) and every
    row is normalised and assigned block by block (three blocks): the planted blobs are recovered, as with
    every row, and a NaN outside the sample is still found."""
    q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    y = np.repeat(np.arange(6), 2000)
    x = (q[y] + 0.08 * rng.normal(size=(len(y), 24))).astype(np.float32)
    low = dict(sample_above=3000, chunk_rows=4096)
    r = kmeans(x, 6, seed=0, nredo=3, **low)
    assert r.n == len(x) and r.sizes.sum() == len(x)
    pairs = set(zip(y.tolist(), r.assignments.tolist()))
    assert len(pairs) == 6 and len({p[1] for p in pairs}) == 6
    _same(r, kmeans(x, 6, seed=0, nredo=3, **low))
    sims = r.similarities(x)
    np.testing.assert_allclose(sims[np.arange(len(x)), r.assignments], r.distances, atol=1e-5)
    np.testing.assert_array_equal(sims.argmax(1), r.assignments)
    bad = x.copy()
    bad[-1, 0] = np.nan  # in the last block
    with pytest.raises(ValueError, match="NaN"):
        kmeans(bad, 6, **low)


def test_auto_k_follows_the_corpus_size():
    from sslguard.cluster import resolve_k

    # about 100 images per cluster, never under 20 (the quickstart's 1,438 digits keep k=20), capped at n
    assert [resolve_k("auto", n) for n in (12, 1_438, 3_925, 50_000, 126_689)] == [12, 20, 40, 500, 1267]
    assert resolve_k(50, 30) == 30 and resolve_k(7, 1000) == 7
    for bad in ("many", 0):
        with pytest.raises(ValueError):
            resolve_k(bad, 100)
