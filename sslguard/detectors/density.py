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
the corpus, so ``"tight"`` ranks it below chance (AUROCs: benchmarks/defaults.md#density). The search
is exact (``IndexFlatIP``): O(N^2 D), about a minute for 50k x 512 on two cores; corpora of millions
need an approximate index.
"""

from __future__ import annotations

import time

import numpy as np

from sslguard.detectors.base import DetectionResult, register_detector, robust_z

DIRECTIONS = ("tight", "sparse")


def knn_distance(embeddings: np.ndarray, k: int, batch_size: int = 4096) -> np.ndarray:
    """Cosine distance of every (L2-normalised) row to its ``k``-th nearest other row (FAISS, exact)."""
    import faiss

    x = np.asarray(embeddings, dtype=np.float32)
    # a new array: the caller's embeddings (shared with the other detectors, possibly read-only) stay as given
    x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kk = min(k + 1, len(x))  # the row itself is its own nearest neighbour
    out = np.empty(len(x), dtype=np.float64)
    for s in range(0, len(x), batch_size):
        sims, _ = index.search(x[s:s + batch_size], kk)
        out[s:s + batch_size] = 1.0 - sims[:, kk - 1].astype(np.float64)
    return np.maximum(out, 0.0)


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
