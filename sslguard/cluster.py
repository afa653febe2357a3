"""k-means on embeddings with FAISS (CPU by default, GPU when faiss-gpu and a GPU are present).

The SSL-stage detectors (PatchSearch, Tejankar et al., CVPR 2023; PoisonCAM, Qian et al., 2023) both
start from k-means on L2-normalised embeddings: the centroids define a "cluster model" that scores an
image by its cosine similarity to each centroid (see :mod:`sslguard.cam`). ``spherical=True``
(the default) normalises the rows and keeps unit-norm centroids, so assignment is by cosine
similarity; ``spherical=False`` is plain Euclidean k-means.

The result is deterministic for a seed: FAISS draws its initial centroids from ``seed``, and the
training sample (below) comes from ``seed``; assignments are recomputed with an exact flat index after
training.

Which rows train the centroids. FAISS subsamples to ``max_points_per_centroid * k`` training points by
default (256 per centroid). Up to ``SAMPLE_ABOVE`` rows the default here uses every row, because at
the small k the CIFAR benchmark uses (k=10..100 on 10k..50k images) FAISS's subsample would be a few
thousand points and a small poison cluster could be missed. Above it, training uses a seeded sample of
``max(SAMPLE_ABOVE, POINTS_PER_CENTROID * k)`` rows, and normalisation, the finiteness check and the
final assignment run over blocks of ``chunk_rows`` rows, so the input may be a memory-mapped ``.npy``
larger than memory. Why sample: FAISS's training needs its training set in memory as one float32
array and costs ``rows * k * D`` per iteration, both growing with the corpus for little gain once each
centroid sees a few hundred rows (FAISS's own rule); why that floor: a group holding a share ``p`` of
the corpus still brings about ``p * SAMPLE_ABOVE`` rows to training, as many as in a corpus at the
threshold trained on every row. Time and memory at scale: ``benchmarks/scale.md``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslguard.utils.chunks import iter_rows, row_chunks
from sslguard.utils.io import save_npz

log = logging.getLogger(__name__)

# rows up to which k-means trains on every row (all of them in memory); see the module docstring
SAMPLE_ABOVE = 200_000
# rows per centroid in the training sample above SAMPLE_ABOVE (FAISS's default max_points_per_centroid)
POINTS_PER_CENTROID = 256
# rows per block when reading the rows (a multiple of faiss's 4,096-query search block)
CHUNK_ROWS = 32_768

# ``k="auto"`` (:func:`resolve_k`): about this many images per cluster, and never fewer clusters than AUTO_K_MIN.
AUTO_K_IMAGES_PER_CLUSTER = 100
AUTO_K_MIN = 20


def resolve_k(k: int | str, n: int) -> int:
    """The number of clusters for ``n`` images: ``k`` itself (capped at ``n``), or for ``"auto"``
    ``max(AUTO_K_MIN, ceil(n / AUTO_K_IMAGES_PER_CLUSTER))``, capped at ``n``.

    Why the rule follows the corpus: a poison group is found only as a cluster of its own, and a group holding
    a share p of the corpus is a cluster's worth of images only when clusters hold about ``p * n`` images or
    fewer. At a fixed k the clusters grow with the corpus, and a small poison share becomes a minority inside
    a clean cluster (measured on the GPU reference encoder's partly learned 8x8 trigger, 100 poisons: no
    cluster gathers them at k=10, 73 of a 96-member cluster at k=20, 45 of 47 at k=50; ``benchmarks/detect.md``).
    100 images per cluster is
    PatchSearch's setting (Tejankar et al.: k=1000 on ImageNet-100's 126k images) and makes a 0.5% share of
    a 20k-image corpus a cluster's worth. The floor of 20 is above the natural groups of a 10-class corpus
    (the quickstart's evidence: ``sslguard.config.detect.DetectClusterConfig``). Splitting a large poison
    group into many clusters costs the detectors nothing: they count a paste into the cluster's nearest
    clusters as an arrival (``group_k``, :func:`sslguard.detectors.corpus.cluster_groups`).
    """
    if isinstance(k, str):
        if k != "auto":
            raise ValueError(f"k must be a positive integer or 'auto', got {k!r}")
        k = max(AUTO_K_MIN, -(-n // AUTO_K_IMAGES_PER_CLUSTER))
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return max(1, min(int(k), n))


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@dataclass
class ClusterResult:
    """k-means outcome, aligned with the rows of the embeddings it was fitted on.

    ``assignments`` (N,) cluster id of each row; ``centroids`` (k, D); ``distances`` (N,) the score
    against the assigned centroid: cosine similarity when ``spherical`` (higher = closer), squared L2
    distance otherwise (lower = closer); ``inertia`` is the sum of squared L2 distances of the rows
    (normalised when spherical) to their centroid.
    """

    assignments: np.ndarray
    centroids: np.ndarray
    distances: np.ndarray
    k: int
    inertia: float
    spherical: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.assignments = np.asarray(self.assignments, dtype=np.int64)
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        self.distances = np.asarray(self.distances, dtype=np.float32)
        if self.centroids.shape[0] != self.k:
            raise ValueError(f"{self.centroids.shape[0]} centroids for k={self.k}")
        if len(self.assignments) != len(self.distances):
            raise ValueError("assignments and distances must have the same length")

    @property
    def n(self) -> int:
        return len(self.assignments)

    @property
    def sizes(self) -> np.ndarray:
        """Members per cluster, (k,)."""
        return np.bincount(self.assignments, minlength=self.k)

    def members(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.assignments == c)

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity of (normalised) ``embeddings`` to every (normalised) centroid, (N, k)."""
        return l2_normalize(embeddings) @ l2_normalize(self.centroids).T

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (a killed process never leaves a half-written file)."""
        return save_npz(path, assignments=self.assignments, centroids=self.centroids, distances=self.distances,
                        k=np.int64(self.k), inertia=np.float64(self.inertia), spherical=np.bool_(self.spherical),
                        seed=np.int64(self.seed))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClusterResult":
        with np.load(path) as z:
            return cls(z["assignments"], z["centroids"], z["distances"], int(z["k"]), float(z["inertia"]),
                       bool(z["spherical"]), int(z["seed"]))


def kmeans(
    embeddings: np.ndarray,
    k: int,
    *,
    spherical: bool = True,
    niter: int = 25,
    nredo: int = 1,
    seed: int = 0,
    use_gpu: bool | None = None,
    max_points_per_centroid: int | None = None,
    kmeans_plus_plus: bool = True,
    verbose: bool = False,
    sample_above: int = SAMPLE_ABOVE,
    chunk_rows: int = CHUNK_ROWS,
) -> ClusterResult:
    """Cluster ``embeddings`` (N, D) into ``k`` clusters with ``faiss.Kmeans``.

    Args:
        embeddings: (N, D) rows; any float dtype, an in-memory array or a read-only memory map
            (``np.load(path, mmap_mode="r")``); never written to.
        k: number of clusters (``1 <= k <= N``).
        spherical: normalise rows and centroids (cosine k-means, what PatchSearch/PoisonCAM use).
        niter, nredo, seed: faiss's iterations, restarts and seed (initial centroids, training sample).
        use_gpu: ``None`` = GPU when :func:`faiss_gpu_available`, else CPU.
        max_points_per_centroid: ``None`` = every row up to ``sample_above`` rows, a seeded sample above
            (see the module docstring); an int is passed to faiss, which then samples
            ``max_points_per_centroid * k`` rows itself (the whole array is then read into memory).
        kmeans_plus_plus: k-means++ seeding when this faiss has it (fewer empty/merged clusters than
            uniform seeding).
        sample_above: corpus size (rows) above which training uses a sample and the assignment runs
            block by block.
        chunk_rows: rows per block when checking and normalising (both paths) and assigning (sampled
            path); rounded up to a multiple of 4,096.

    Limits: up to ``sample_above`` rows one float32 copy of all rows is held in memory (the input's own
    when it is float32 and ``spherical=False``); above, the training sample is, and a group holding a
    share ``p`` of the corpus brings only about ``p`` times the sample's size to training. Time and
    memory at scale: ``benchmarks/scale.md``.
    """
    n, d = _check_input(embeddings, k)
    gpu = faiss_gpu_available() if use_gpu is None else bool(use_gpu)
    if gpu and not faiss_gpu_available():
        raise RuntimeError("use_gpu=True but faiss has no GPU support or sees no GPU")
    t0 = time.perf_counter()
    sampled = max_points_per_centroid is None and n > sample_above
    if sampled:
        km = _train(_training_sample(embeddings, k, sample_above, spherical, seed, chunk_rows), k, spherical,
                    niter, nredo, seed, gpu, None, kmeans_plus_plus, verbose)
        res = _assign_chunked(embeddings, km.centroids, spherical, chunk_rows)
    else:
        x = _all_rows(embeddings, spherical, chunk_rows)
        km = _train(x, k, spherical, niter, nredo, seed, gpu, max_points_per_centroid, kmeans_plus_plus, verbose)
        res = _assign(x, km.centroids, spherical)
    assign, centroids, score, sq = res
    log.info("k-means k=%d on %d x %d (%s, %s, %s) in %.2fs", k, n, d, "gpu" if gpu else "cpu",
             "spherical" if spherical else "euclidean", "sampled" if sampled else "all rows",
             time.perf_counter() - t0)
    return ClusterResult(assign, centroids, score, int(k), float(sq.sum()), spherical, int(seed))


def _check_input(embeddings, k) -> tuple[int, int]:
    shape = np.shape(embeddings)
    if len(shape) != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {shape}")
    n, d = shape
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} clusters asked for only {n} embeddings; k must be <= the number of images")
    return n, d


def _all_rows(embeddings, spherical: bool, chunk_rows: int) -> np.ndarray:
    """Every row as one float32 array (a new one, normalised, when spherical), checked for NaN/inf; built
    block by block, which gives the same bits as one pass over all rows."""
    if not spherical:
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if any(not np.isfinite(x[a:b]).all() for a, b in row_chunks(len(x), chunk_rows)):
            raise ValueError("embeddings contain NaN or inf")
        return x
    x = np.empty(np.shape(embeddings), dtype=np.float32)
    for s, block in iter_rows(embeddings, chunk_rows):
        if not np.isfinite(block).all():
            raise ValueError("embeddings contain NaN or inf")
        x[s:s + len(block)] = l2_normalize(block)
    return x


def _training_sample(embeddings, k: int, sample_above: int, spherical: bool, seed: int, chunk_rows: int):
    """A seeded sample of ``max(sample_above, POINTS_PER_CENTROID * k)`` rows (normalised when spherical),
    read block by block; every block is checked for NaN/inf on the way."""
    n, d = np.shape(embeddings)
    m = min(n, max(int(sample_above), POINTS_PER_CENTROID * int(k)))
    idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    out = np.empty((m, d), dtype=np.float32)
    for s, block in iter_rows(embeddings, chunk_rows):
        if not np.isfinite(block).all():
            raise ValueError("embeddings contain NaN or inf")
        lo, hi = np.searchsorted(idx, [s, s + len(block)])
        rows = block[idx[lo:hi] - s]
        out[lo:hi] = l2_normalize(rows) if spherical else rows
    return out


def _train(x: np.ndarray, k: int, spherical: bool, niter: int, nredo: int, seed: int, gpu: bool,
           max_points_per_centroid: int | None, kmeans_plus_plus: bool, verbose: bool):
    """``faiss.Kmeans`` trained on ``x``; every row of ``x`` is used unless ``max_points_per_centroid``."""
    import faiss

    n, d = x.shape
    kwargs = dict(niter=niter, nredo=nredo, seed=int(seed), spherical=spherical, verbose=verbose,
                  max_points_per_centroid=int(max_points_per_centroid or -(-n // k) + 1),
                  min_points_per_centroid=1)
    if kmeans_plus_plus and hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        kwargs["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    if gpu:
        kwargs["gpu"] = True
    km = faiss.Kmeans(d, int(k), **kwargs)
    km.train(x)
    return km


def _assignment_index(centroids: np.ndarray, spherical: bool):
    """Centroids (normalised when spherical) and an exact index over them: chosen here (not
    ``km.index``), so CPU and GPU runs assign the same way."""
    import faiss

    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if spherical:
        centroids = l2_normalize(centroids)
    index = faiss.IndexFlatIP(centroids.shape[1]) if spherical else faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return centroids, index


def _assign(x: np.ndarray, centroids: np.ndarray, spherical: bool):
    """``(assignments, centroids, score, squared distance)`` of the rows of in-memory ``x`` (prepared)."""
    centroids, index = _assignment_index(centroids, spherical)
    score, assign = index.search(x, 1)
    assign, score = assign[:, 0].astype(np.int64), score[:, 0]
    sq = np.empty(len(x), dtype=np.float32)
    for a, b in row_chunks(len(x), CHUNK_ROWS):  # row by row sums: the same bits as one pass
        sq[a:b] = ((x[a:b] - centroids[assign[a:b]]) ** 2).sum(1)
    return assign, centroids, score, sq


def _assign_chunked(embeddings, centroids: np.ndarray, spherical: bool, chunk_rows: int):
    """:func:`_assign` over blocks of ``chunk_rows`` rows of the raw ``embeddings`` (normalised per block)."""
    centroids, index = _assignment_index(centroids, spherical)
    n = len(embeddings)
    assign, score, sq = np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.float32)
    for s, block in iter_rows(embeddings, chunk_rows):
        xb = l2_normalize(block) if spherical else block
        sc, a = index.search(xb, 1)
        e = s + len(xb)
        assign[s:e], score[s:e] = a[:, 0], sc[:, 0]
        sq[s:e] = ((xb - centroids[a[:, 0]]) ** 2).sum(1)
    return assign, centroids, score, sq
