"""k-means on embeddings with FAISS (CPU by default, GPU when faiss-gpu and a GPU are present).

The SSL-stage detectors (PatchSearch, Tejankar et al., CVPR 2023; PoisonCAM, Qian et al., 2023) both
start from k-means on L2-normalised embeddings: the centroids define a "cluster model" that scores an
image by its cosine similarity to each centroid (see :mod:`sslguard.cam`). ``spherical=True``
(the default) normalises the rows and keeps unit-norm centroids, so assignment is by cosine
similarity; ``spherical=False`` is plain Euclidean k-means.

The result is deterministic for a seed: FAISS draws its initial centroids and its training subsample
from ``seed``; assignments are recomputed with an exact flat index after training. FAISS subsamples to
``max_points_per_centroid * k`` training points by default (256 per centroid); here the default uses
every point, because at the small k the CIFAR benchmark uses (k=10..100 on 10k..50k images) the
subsample would be a few thousand points and a small poison cluster could be missed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslguard.utils.io import save_npz

log = logging.getLogger(__name__)


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
) -> ClusterResult:
    """Cluster ``embeddings`` (N, D) into ``k`` clusters with ``faiss.Kmeans``.

    ``spherical``: normalise rows and centroids (cosine k-means, what PatchSearch/PoisonCAM use).
    ``use_gpu``: ``None`` = GPU when :func:`faiss_gpu_available`, else CPU. ``max_points_per_centroid``:
    ``None`` trains on every row (see the module docstring). ``kmeans_plus_plus`` uses k-means++
    seeding when this faiss has it (fewer empty/merged clusters than uniform seeding).
    """
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {x.shape}")
    n, d = x.shape
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} clusters asked for only {n} embeddings; k must be <= the number of images")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    if spherical:
        x = l2_normalize(x)
    gpu = faiss_gpu_available() if use_gpu is None else bool(use_gpu)
    if gpu and not faiss_gpu_available():
        raise RuntimeError("use_gpu=True but faiss has no GPU support or sees no GPU")
    kwargs = dict(niter=niter, nredo=nredo, seed=int(seed), spherical=spherical, verbose=verbose,
                  max_points_per_centroid=int(max_points_per_centroid or -(-n // k) + 1),
                  min_points_per_centroid=1)
    if kmeans_plus_plus and hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        kwargs["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    if gpu:
        kwargs["gpu"] = True
    t0 = time.perf_counter()
    km = faiss.Kmeans(d, int(k), **kwargs)
    km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    # Assign with an exact index chosen here (not km.index), so CPU and GPU runs assign the same way.
    if spherical:
        centroids = l2_normalize(centroids)
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexFlatL2(d)
    index.add(centroids)
    score, assign = index.search(x, 1)
    assign, score = assign[:, 0].astype(np.int64), score[:, 0]
    sq = ((x - centroids[assign]) ** 2).sum(1)
    log.info("k-means k=%d on %d x %d (%s, %s) in %.2fs", k, n, d, "gpu" if gpu else "cpu",
             "spherical" if spherical else "euclidean", time.perf_counter() - t0)
    return ClusterResult(assign, centroids, score, int(k), float(sq.sum()), spherical, int(seed))
