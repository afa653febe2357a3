"""Embedding density: a training-free ranking of images by how crowded their neighbourhood is.

After the local-density scores of Huang et al. (ICLR 2025, "Detecting Backdoor Samples in Contrastive
Language Image Pretraining"): the cosine distance to the ``k``-th nearest neighbour in the encoder's
normalised embedding (a FAISS inner-product index). In both directions:

- ``"tight"`` (default): an SSL encoder that learned a trigger maps the poisons, whatever they show,
  onto nearly one point, so their neighbourhoods are unusually *dense*; score = robust z of
  ``-log d_k`` over the corpus;
- ``"sparse"``: poisons a model did not fold into the data sit in unusually *sparse* neighbourhoods
  (Huang et al.'s finding for CLIP); score = robust z of ``log d_k``.

Both z-scores are kept in ``evidence`` (``z_tight``, ``z_sparse``) whichever ``direction`` scores.

It needs no image, no gradient and no training: one k-NN search over the embeddings the pipeline has
already computed, so it is the cheapest SSL-stage signal and a check on the other two.

Flags: none. A dense neighbourhood is no evidence of a trigger by itself (a class of near-identical
images is dense too), so this detector ranks and shows (report, fused score) and leaves the decision to
the detectors that test a trigger causally (PoisonCAM's paste check, PatchSearch's pull rate).

Defaults (the measurements behind each: ``benchmarks/defaults.md#density``):

- ``k_neighbors=10``: k-means' smallest meaningful group here (Huang et al. use 16).
  Evidence: benchmarks/defaults.md#density.
- ``direction="tight"``: an SSL encoder that learned a trigger folds its poisons together.
  Evidence: benchmarks/defaults.md#density.

Limits: a weak signal on its own. Measured by the project's generalisation issue, ``d_k`` ranked the
poisons of a held-out 12 px CIFAR-10 encoder well but those of the quickstart barely above chance,
where clean digit classes are as dense as the trigger cluster; on the planted encoder of the tests (a
supervised encoder whose trigger class holds digits of every kind) the trigger group is *sparser* than
the corpus, so ``"tight"`` ranks it below chance (AUROCs: benchmarks/defaults.md#density).

Scale. Up to ``EXACT_MAX`` rows the search is exact (``IndexFlatIP``, ``N^2 D`` products); the
threshold keeps every corpus of CIFAR-10's size (50k) exact and its scores unchanged. Above it, an
inverted-file index (``IndexIVFFlat``, inner product) searches ``IVF_NPROBE`` of ``nlist =
IVF_LISTS_PER_SQRT_N * sqrt(N)`` lists per query, the lists' centroids trained on a seeded sample of
``IVF_TRAIN_PER_LIST`` rows per list (FAISS asks for at least 39). Why these: a query costs about
``nlist`` centroid products plus ``nprobe * N / nlist`` list products (the slower kind), and adding
costs ``N * nlist``, so ``nlist`` grows as ``sqrt(N)``, four per ``sqrt(N)`` to move work from the list
scan to the centroids at a million rows; ``nprobe`` was chosen by its error against the exact search
(``benchmarks/scale.md``). With ``nprobe`` fixed, a query scans a share of the corpus that falls as
``1/sqrt(N)``, so more neighbours are missed as N grows; a missed neighbour can only make ``d_k``
larger. The input may be a read-only memory map: rows are normalised and added block by block, but
either index holds a float32 copy of all normalised rows (``N * D * 4`` bytes). Time, memory and the
error against the exact search: ``benchmarks/scale.md``.
"""

from __future__ import annotations

import time

import numpy as np

from sslguard.detectors.base import DetectionResult, register_detector, robust_z
from sslguard.utils.chunks import iter_rows, release_pages

DIRECTIONS = ("tight", "sparse")
# rows up to which the k-NN search is exact; above, an inverted-file index (module docstring)
EXACT_MAX = 50_000
# the approximate index: nlist = IVF_LISTS_PER_SQRT_N * sqrt(N) lists, IVF_NPROBE of them probed per
# query, the lists' centroids trained on IVF_TRAIN_PER_LIST rows per list
IVF_LISTS_PER_SQRT_N = 4.0
IVF_NPROBE = 16
IVF_TRAIN_PER_LIST = 40


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _normalized(embeddings: np.ndarray, chunk_rows: int) -> np.ndarray:
    """A new float32 array of the L2-normalised rows, filled block by block (the input stays as given)."""
    x = np.empty(np.shape(embeddings), dtype=np.float32)
    for s, block in iter_rows(embeddings, chunk_rows):
        x[s:s + len(block)] = _unit_rows(block)
    return x


def knn_distance(
    embeddings: np.ndarray,
    k: int,
    batch_size: int = 4096,
    *,
    exact_max: int = EXACT_MAX,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cosine distance of every (L2-normalised) row to its ``k``-th nearest other row.

    Args:
        embeddings: (N, D) rows, an in-memory array or a read-only memory map; never written to.
        k: which neighbour (the row itself is not counted).
        batch_size: queries per faiss search call (and rows per normalisation block).
        exact_max: up to this many rows the search is exact (``IndexFlatIP``); above, it is
            approximate (:func:`ivf_knn_similarity`). ``0`` forces the approximate path.
        nlist, nprobe: the approximate index's lists and lists probed per query (``None`` =
            :func:`ivf_params`).
        seed: the approximate index's training sample and k-means seed.

    Limits: the exact search costs ``N^2 D``; the approximate one may miss true neighbours, which can
    only make a distance larger (its error against the exact search: ``benchmarks/scale.md``). Either
    index holds a float32 copy of the normalised rows in memory.
    """
    import faiss

    n = len(embeddings)
    kk = min(k + 1, n)  # the row itself is its own nearest neighbour
    if n > exact_max:
        sims = ivf_knn_similarity(embeddings, kk, nlist=nlist, nprobe=nprobe, seed=seed, batch_size=batch_size)
        return np.maximum(1.0 - sims.astype(np.float64), 0.0)
    # a new array: the caller's embeddings (shared with the other detectors, possibly read-only) stay as given
    x = _normalized(embeddings, batch_size)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, batch_size):
        sims, _ = index.search(x[s:s + batch_size], kk)
        out[s:s + batch_size] = 1.0 - sims[:, kk - 1].astype(np.float64)
    return np.maximum(out, 0.0)


def ivf_params(n: int) -> tuple[int, int]:
    """Default ``(nlist, nprobe)`` of the approximate search for ``n`` rows (why: the module docstring)."""
    nlist = int(max(1, min(n // 39, round(IVF_LISTS_PER_SQRT_N * np.sqrt(n)))))
    return nlist, int(min(nlist, IVF_NPROBE))


def ivf_knn_similarity(
    embeddings: np.ndarray,
    kk: int,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
    batch_size: int = 4096,
) -> np.ndarray:
    """Inner product of every normalised row with its ``kk``-th nearest row (itself included), (N,), from
    a ``faiss.IndexIVFFlat`` (inner product).

    The list centroids are trained on a seeded sample of ``IVF_TRAIN_PER_LIST * nlist`` rows; every row
    is normalised and added block by block. The queries are the index's own rows, taken list by list
    (about ``batch_size`` at a time): queries from one list probe nearly the same lists, which then stay
    in the CPU's cache, and the input is not read again. A row whose probed lists hold fewer than
    ``kk`` rows is searched again with more lists probed.
    """
    import faiss

    n, d = np.shape(embeddings)
    auto_nlist, auto_nprobe = ivf_params(n)
    nlist = int(nlist or auto_nlist)
    nprobe = int(min(nlist, nprobe or auto_nprobe))
    m = min(n, IVF_TRAIN_PER_LIST * nlist)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    train = _normalized(np.asarray(embeddings)[idx], batch_size)
    release_pages(embeddings)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.max_points_per_centroid = int(seed), m
    index.train(train)
    del train
    for _, block in iter_rows(embeddings, batch_size * 8):
        index.add(_unit_rows(block))
    out = np.full(n, np.nan, dtype=np.float32)
    lists = index.invlists
    vecs, ids = [], []
    for li in range(nlist):
        size = lists.list_size(li)
        if size:
            vecs.append(faiss.rev_swig_ptr(lists.get_codes(li), size * index.code_size).view(np.float32))
            ids.append(faiss.rev_swig_ptr(lists.get_ids(li), size))
        if ids and (sum(map(len, ids)) >= batch_size or li == nlist - 1):
            rows = np.concatenate(ids)
            out[rows] = _search_kth(index, np.concatenate(vecs).reshape(len(rows), d), kk, nprobe, nlist)
            vecs, ids = [], []
    if np.isnan(out).any():  # every row sits in one list: none can be missed
        raise RuntimeError("ivf_knn_similarity: some rows were not searched")
    return out


def _search_kth(index, xb: np.ndarray, kk: int, nprobe: int, nlist: int) -> np.ndarray:
    """The ``kk``-th similarity of each query; queries short of ``kk`` results probe four times more lists."""
    index.nprobe = probe = nprobe
    sims, ids = index.search(xb, kk)
    short = np.flatnonzero(ids[:, kk - 1] < 0)
    while len(short) and probe < nlist:
        probe = index.nprobe = min(nlist, probe * 4)
        sims[short], ids[short] = index.search(xb[short], kk)
        short = short[ids[short, kk - 1] < 0]
    return sims[:, kk - 1]


@register_detector("density", stage="ssl")
def density(
    *,
    dataset,
    embeddings: np.ndarray,
    k_neighbors: int = 10,
    direction: str = "tight",
) -> DetectionResult:
    """Score every image of ``dataset`` by its embedding's ``k_neighbors``-th neighbour distance.

    Args:
        dataset: the corpus (its ``keys`` index the result).
        embeddings: (N, D) encoder embeddings in dataset order (normalised here).
        k_neighbors: which neighbour's distance (Huang et al. use 16; 10 matches k-means' smallest
            meaningful group here).
        direction: ``"tight"`` (SSL trigger clusters) or ``"sparse"`` (see the module docstring).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"density: direction must be one of {DIRECTIONS}, got {direction!r}")
    if k_neighbors < 1:
        raise ValueError(f"density: k_neighbors must be >= 1, got {k_neighbors}")
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(dataset):
        raise ValueError(f"density: {len(embeddings)} embeddings for a dataset of {len(dataset)} images")
    t0 = time.perf_counter()
    d = knn_distance(embeddings, k_neighbors)
    log_d = np.log(d + 1e-6)  # 1e-6: duplicates (d = 0) stay finite
    z_tight = robust_z(-log_d, floor=1e-6)
    z_sparse = -z_tight
    scores = z_tight if direction == "tight" else z_sparse
    info = {"k_neighbors": k_neighbors, "direction": direction, "median_kdist": float(np.median(d)),
            "evidence": "none: density ranks but does not flag (a dense neighbourhood is no proof of a trigger)",
            "seconds": time.perf_counter() - t0}
    # threshold = the top score, so that "flagged = scores > threshold" holds with nothing flagged
    return DetectionResult("density", np.asarray(dataset.keys), scores, np.zeros(len(scores), dtype=bool),
                           float(scores.max()) if len(scores) else 0.0, {"kdist": d, "z_tight": z_tight, "z_sparse": z_sparse}, info)
