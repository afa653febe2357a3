"""Activation clustering (Chen et al. 2018, "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering", arXiv:1811.03728).

For every label, the classifier's penultimate activations of the images carrying that label are
reduced to 10 dimensions and split by k-means with k=2. The reduction is PCA by default (see
*Reduction* below); FastICA, the paper's choice, is an option (``reduce="ica"`` / ``"fastica"``).
A backdoored class splits into "images that show the class" and "images that carry the trigger",
because the model reaches the same label for two different reasons. A class is declared poisoned by:

- ``decision="size"`` (the paper's *relative size*): the poison cluster holds at most
  ``size_threshold`` (35%) of the class;
- ``decision="silhouette"`` (the paper's *silhouette score*): the two-cluster split fits well, i.e. the
  class's mean silhouette is at least ``silhouette_threshold`` (ART's default);
- ``decision="reference"`` (this package's addition; chosen by ``decision="auto"``, the default, whenever
  trusted clean ``reference`` images are given): a clean class's trusted images fall into its two
  clusters in proportion to their sizes, while a poison cluster — images that reach the label for
  another reason — holds few of them. Two tests, both needed:

  1. *depletion* (per class): the one-sided binomial probability of so few trusted images in the
     suspect cluster (its share of the class as the null rate, doubled because the suspect cluster is
     the emptier of two) is below ``reference_alpha`` divided by the number of classes analysed
     (Bonferroni). It works at any poison share, including the 50/50 split where the size rule is a
     coin toss;
  2. *the class test* (across classes): the suspect cluster lies farther from the class's trusted
     images, relative to the rest of the class, than the other classes' suspect clusters do. The
     statistic is ``log(median d_suspect / median d_other)``, ``d`` a member's distance to its nearest
     trusted image of the class (in the reduced space); the class passes when it is at least
     ``outlier_z`` robust standard deviations (1.4826 * MAD) above the classes' median, the spread
     taken no smaller than the statistic's own sampling error (the large-sample error of a median).

  Why the class test: a trusted set from another population (other writers, another camera, another
  contrast) is not a sample of the corpus. Its images can avoid one cluster of every clean class beyond
  chance, so test 1 alone fires on clean classes (on MNIST with the other writers as trusted set it
  flagged 2 and 8 of 9 clean classes for activations and heatmaps; benchmarks/classifier_shift.md). But
  such a shift moves the trusted images away from *both* clusters of a class alike, and it touches every
  class, so the other classes' distance ratios are the null: the nine clean classes of an all-to-one attack show
  how far a shift alone puts a suspect cluster. A trigger cluster is unlike any trusted image of its
  label, shift or not (measured ratios: benchmarks/classifier_shift.md). ``reference_tolerance`` (off at
  its default 1) adds a fixed cut on the depletion: the trusted images' share of the suspect cluster at most that many
  times the cluster's share of the class. With fewer than three classes holding trusted images there are
  no peers: the class test passes every class and a fixed ``reference_tolerance`` is the only guard
  against a shift. ``class_test="none"`` switches the class test off (all-to-all attacks, which poison
  most classes; set ``reference_tolerance`` then, as this package did before the class test:
  benchmarks/defaults.md#activation_clustering). A class without trusted images falls back to ``"outlier"``;
- ``decision="outlier"`` (the default without a reference; this package's addition): the class's silhouette stands out from
  the other classes' — at least ``outlier_z`` robust standard deviations (1.4826 * MAD) above their
  median. This silhouette is measured in the input feature space (the activations), with the
  clusters found in the reduced space: ICA whitens, so each of the 10 retained directions gets unit
  variance and the one direction that carries a poison/clean split counts no more than nine noise
  directions (on the CIFAR-10 benchmark model the poisoned class stood out far more by its
  activation-space silhouette than by its whitened one). A fixed silhouette threshold does not carry
  over between feature spaces and models (on the CIFAR-10 benchmark, clean classes' heatmap
  silhouettes exceed ART's threshold, and the whitened activation silhouettes of clean and poisoned
  classes differ by hundredths), while a poisoned class stands out among its peers in both. It
  assumes a minority of classes is poisoned (all-to-one attacks); for all-to-all attacks use
  ``"size"`` or ``"silhouette"``.

Which of the two clusters is the poison one: ``poison_cluster="smaller"`` (the paper),
``"silhouette"`` — the cluster whose members have the higher mean silhouette (the tighter one) — or
``"auto"`` (default): when trusted clean ``reference`` activations of the class are given (a few per
class), the cluster that holds fewer of them; otherwise (or on a tie) the smaller cluster when it
holds at most ``size_threshold`` of the class, else the tighter one. The paper's size argument fails
when an all-to-one attack at 10% of a 10-class dataset puts about as many poisons as clean images
into the target class: "the smaller cluster" is then a coin toss. Tightness is no sure cue either
(in whitened ICA space the clean cluster can be the tighter one): on the CIFAR-10 benchmark the
tighter half was the poison one for one trained model and the clean one for the next two (BadNets
and label-consistent), while the split itself was exact each time. A few trusted clean images per
class settle it, and the benchmark reports the detector with and without them.

Reduction: ``reduce="pca"`` (default) keeps each principal component's own variance. A poison group
of share ``eps`` at distance ``d`` from the clean images adds ``eps (1 - eps) d^2`` of variance along
one direction, so in PCA space that direction dominates the 2-means split. ICA whitens first: every
retained direction gets unit variance, the split direction counts no more than nine noise directions,
and 2-means follows whichever of them happens to be bimodal. On the planted classifier case
(:func:`sslguard.testing.planted_badnets_classifier_case`) the whitened split isolated the poisons at
one seed in four and so moved with the CPU's float order; the PCA split was exact at all four.

Cost: ``reduce="ica"`` computes the whitened principal components (unit variance, as FastICA's
whitening) and skips FastICA's rotation: FastICA's sources are those whitened components times an
orthogonal matrix, and k-means (k-means++ seeding included) and the silhouette see only Euclidean
distances, which an orthogonal map preserves, so the clusters, flags and scores are the same while
the ICA iterations (most of the run time, at ART's tolerance; benchmarks/defaults.md#activation_clustering)
are saved.
``reduce="fastica"`` runs sklearn's FastICA itself (ART's settings) for when the components are wanted.

Scores (higher = more suspicious) make the binary rule rankable: ``score = [class flagged] + (m + 1) / 2``
where ``m in [-1, 1]`` is the member's margin towards the poison cluster,
``(|z - c_clean| - |z - c_poison|) / |c_clean - c_poison|`` in the reduced space (``m > 0`` exactly
when k-means puts it in the poison cluster). Flags are ``score > 1.5``: members of a poison cluster of a
flagged class, which is the paper's rule.

Defaults (the measurements behind each: ``benchmarks/defaults.md#activation_clustering``):

- ``reduce="pca"``, ``n_components=10``: the split direction keeps its variance; the paper's 10
  dimensions. Evidence: benchmarks/defaults.md#activation_clustering (reduce).
- ``decision="auto"`` (``"reference"`` with trusted images, else ``"outlier"``), ``outlier_z=3.0``,
  ``reference_alpha=0.05``: the trusted images decide wherever they exist; the outlier rule otherwise.
  Evidence: benchmarks/defaults.md#activation_clustering (decision).
- the class test of the reference decision (``outlier_z`` again), ``reference_tolerance`` off: the
  other classes measure the shift; the fixed tolerance used before flagged clean classes under stronger
  shifts far more often. Evidence: benchmarks/classifier_shift.md.
- ``size_threshold=0.35`` (the paper), ``silhouette_threshold=0.10`` (ART's default).
  Evidence: benchmarks/defaults.md#activation_clustering (the paper's rules).
- ``poison_cluster="auto"``: neither size nor tightness picks the poison cluster reliably.
  Evidence: benchmarks/defaults.md#activation_clustering (poison_cluster).

Limits: without a reference the class decision is the silhouette outlier rule, whose margin is thin
on small models (planted classifier case, PCA: over four seeds the target's z fell as low as 3.4
against a cut of 3; benchmarks/defaults.md#activation_clustering), and it has no null for a clean
corpus: some class always has the highest silhouette, and on clean Imagenette (no trusted split) one
class stood out enough to lose 95 images. Pass trusted images whenever they exist.

*Shift tolerated by the reference decision* (benchmarks/classifier_shift.md): another population of
writers (MNIST's two halves: no clean class flagged, where the binomial test alone flagged some), and
in most runs blurred, darkened, brightened or thickened trusted digits. Where it fails it mostly fails
closed: under the strongest shifts (a grey background added to the trusted digits) the poisoned class
is missed rather than clean classes flagged; in that sweep a clean class passed both tests in one run of
25 (darkened MNIST), and for heatmaps in one (thickened MNIST, where nine very tight peers made a 4%
larger distance ratio stand out). The class test assumes a minority of classes is poisoned (all-to-one
attacks), like the outlier rule; for all-to-all attacks use ``class_test="none"`` with a
``reference_tolerance``, or ``"size"`` / ``"silhouette"``. A shift confined to one class (its trusted
images lack a style that its corpus images have) reads like a trigger cluster.

The paper's most reliable decision, *exclusionary reclassification* (retrain without the cluster and
see how the model labels it), needs a retraining per class and is not implemented. A class with fewer
than ``n_components + 2`` images is not analysed (score 0.5, never flagged). Clean-label attacks whose
poisons look like the class (label-consistent, SIG) split less cleanly.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from scipy.stats import binom
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin_min, silhouette_samples

from sslguard.detectors.base import DetectionResult, register_detector, robust_z

DECISIONS = ("auto", "reference", "outlier", "size", "silhouette")
POISON_CLUSTERS = ("auto", "smaller", "silhouette")
REDUCERS = ("ica", "fastica", "pca", "none")
CLASS_TESTS = ("outlier", "none")


def reduce_features(x: np.ndarray, method: str, n_components: int, seed: int) -> np.ndarray:
    """``x`` reduced to ``n_components`` dimensions: ``"ica"`` whitened principal components (FastICA's
    sources up to an orthogonal rotation; see the module docstring), ``"fastica"`` sklearn's FastICA,
    ``"pca"`` principal components, or left as is (``"none"``)."""
    if method == "none" or x.shape[1] <= n_components:
        return x.astype(np.float64)
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    if method in ("pca", "ica"):
        return _reduce_fit(x, method, n_components, seed)[0]
    with warnings.catch_warnings():
        # FastICA often stops at max_iter on small classes; the components are still usable for
        # a two-way split, which is all the paper asks of them. tol=0.005 is ART's setting: a looser
        # tolerance than sklearn's 1e-4 stops long before max_iter without changing that split.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FastICA(n_components=k, whiten="unit-variance", max_iter=1000, tol=0.005,
                       random_state=seed).fit_transform(x)


def _check_options(*, reduce: str, decision: str, reference, reference_alpha: float, reference_tolerance: float,
                   poison_cluster: str, size_threshold: float, class_test: str = "outlier") -> str:
    """Reject unknown or out-of-range options; the decision rule ``decision`` resolves to."""
    if reduce not in REDUCERS:
        raise ValueError(f"reduce must be one of {REDUCERS}, got {reduce!r}")
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if decision == "auto":
        decision = "reference" if reference is not None else "outlier"
    if decision == "reference" and reference is None:
        raise ValueError('decision="reference" needs trusted clean reference rows')
    if not 0.0 < reference_alpha < 1.0:
        raise ValueError(f"reference_alpha must be in (0, 1), got {reference_alpha}")
    if not 0.0 < reference_tolerance <= 1.0:
        raise ValueError(f"reference_tolerance must be in (0, 1], got {reference_tolerance}")
    if class_test not in CLASS_TESTS:
        raise ValueError(f"class_test must be one of {CLASS_TESTS}, got {class_test!r}")
    if poison_cluster not in POISON_CLUSTERS:
        raise ValueError(f"poison_cluster must be one of {POISON_CLUSTERS}, got {poison_cluster!r}")
    if not 0.0 < size_threshold < 1.0:
        raise ValueError(f"size_threshold must be in (0, 1), got {size_threshold}")
    return decision


def _reference_rows(reference, reference_labels, c, fitted) -> np.ndarray | None:
    """Class ``c``'s trusted clean rows mapped into the class's reduced space, or ``None`` when there are
    none (or the reduction has no map for new rows)."""
    if reference is None or fitted is None:
        return None
    ref = reference[reference_labels == c]
    return fitted(ref) if len(ref) else None


def _reference_counts(zr: np.ndarray | None, centres: np.ndarray) -> np.ndarray | None:
    """The trusted rows per cluster (nearest centre), or ``None`` when there are none."""
    if zr is None:
        return None
    return np.bincount(np.linalg.norm(zr[:, None, :] - centres[None], axis=2).argmin(1), minlength=2)


def _reference_distance(z: np.ndarray, in_suspect: np.ndarray, zr: np.ndarray) -> tuple[float, float]:
    """``(log ratio, its standard error)``: the log of the median distance from the suspect cluster's
    members to their nearest trusted image of the class over the same median for the other cluster's
    members (module docstring, *the class test*). The standard error is the large-sample one of a
    median (1.2533 sigma / sqrt(n), sigma from the MAD of the log distances), summed over both clusters."""
    d = pairwise_distances_argmin_min(z, zr)[1]
    logd = np.log(np.maximum(d, 1e-12))
    parts = []
    for members in (logd[in_suspect], logd[~in_suspect]):
        med = float(np.median(members))
        sigma = 1.4826 * float(np.median(np.abs(members - med)))
        parts.append((med, (1.2533 * sigma) ** 2 / len(members)))
    return parts[0][0] - parts[1][0], float(np.sqrt(parts[0][1] + parts[1][1]))


def _pick_poison_cluster(poison_cluster: str, n_c: int, sizes: np.ndarray, sil_cluster: np.ndarray, ref_counts,
                         size_threshold: float) -> int:
    """Which of the two clusters is the poison one (module docstring)."""
    small, tight = int(np.argmin(sizes)), int(np.argmax(sil_cluster))
    if poison_cluster == "smaller":
        return small
    if poison_cluster == "silhouette":
        return tight
    if ref_counts is not None and ref_counts[0] != ref_counts[1]:
        return int(np.argmin(ref_counts))  # the trusted clean images of the class sit in the other one
    # auto: size decides when it can (the paper's 35%), the tighter cluster when the split is even
    return small if sizes[small] / n_c <= size_threshold else tight


def _class_record(n_c: int, p: int, sizes, sil, sil_feat, sil_cluster, ref_counts, ref_dist) -> dict[str, Any]:
    """The per-class record of an analysed class (before the class decision)."""
    has_ref = ref_counts is not None and ref_counts.sum() > 0
    return {
        "n": int(n_c), "analysed": True, "poison_cluster_share": float(sizes[p] / n_c),
        "silhouette": float(sil.mean()), "feature_silhouette": float(sil_feat.mean()),
        "cluster_silhouette": sil_cluster.tolist(), "cluster_sizes": sizes.tolist(),
        "reference_counts": None if ref_counts is None else ref_counts.tolist(),
        # P(this few trusted clean images in the suspect cluster | the class is clean), x2 for
        # picking the emptier of the two clusters
        "reference_p": float(min(1.0, 2.0 * binom.cdf(ref_counts[p], ref_counts.sum(), sizes[p] / n_c)))
        if has_ref else None,
        # the trusted images' share of the suspect cluster (reference_tolerance compares it with the
        # cluster's share of the class)
        "reference_share": float(ref_counts[p] / ref_counts.sum()) if has_ref else None,
        # how much farther the suspect cluster lies from the trusted images than the rest of the class
        # (log ratio of median nearest-trusted-image distances; the class test compares it across classes)
        "reference_distance": None if ref_dist is None else float(ref_dist[0]),
        "reference_distance_se": None if ref_dist is None else float(ref_dist[1]),
    }


def _split_class(features: np.ndarray, pos: np.ndarray, c, *, reduce: str, n_components: int, seed: int,
                 poison_cluster: str, size_threshold: float, reference, reference_labels):
    """One class: reduce, 2-means, pick the poison cluster.

    ``(record, (margin, in poison cluster, poison cluster id))``; ``(record, None)`` when not analysed."""
    if len(pos) < n_components + 2:
        return {"n": int(len(pos)), "analysed": False, "poisoned": False}, None
    z, fitted = _reduce_fit(features[pos], reduce, n_components, seed)
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z)
    centres = km.cluster_centers_
    d = np.linalg.norm(z[:, None, :] - centres[None, :, :], axis=2)
    assign = d.argmin(1)  # nearest centre, so assignment and margin agree exactly
    sizes = np.bincount(assign, minlength=2)
    if sizes.min() == 0:
        return {"n": int(len(pos)), "analysed": False, "poisoned": False, "reason": "one cluster"}, None
    sil = silhouette_samples(z, assign)
    sil_cluster = np.array([sil[assign == k].mean() for k in (0, 1)])
    # The class-level outlier decision reads the silhouette where distances are the features' own
    # (module docstring); with no reduction the two are the same.
    unreduced = reduce == "none" or features.shape[1] <= n_components
    sil_feat = sil if unreduced else silhouette_samples(features[pos], assign)
    zr = _reference_rows(reference, reference_labels, c, fitted)
    ref_counts = _reference_counts(zr, centres)
    p = _pick_poison_cluster(poison_cluster, len(pos), sizes, sil_cluster, ref_counts, size_threshold)
    gap = float(np.linalg.norm(centres[0] - centres[1])) or 1.0
    m = np.clip((d[:, 1 - p] - d[:, p]) / gap, -1.0, 1.0)
    ref_dist = _reference_distance(z, assign == p, zr) if zr is not None else None
    record = _class_record(len(pos), p, sizes, sil, sil_feat, sil_cluster, ref_counts, ref_dist)
    return record, (m, assign == p, p)


def peer_z(values, floor: float) -> np.ndarray:
    """``(values - median) / max(1.4826 * MAD, floor)``: how many robust standard deviations each value lies
    above the classes' median, with the spread never taken below ``floor`` (the values' own sampling
    error: a spread across classes smaller than each class's noise says nothing)."""
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    return (v - med) / max(1.4826 * float(np.median(np.abs(v - med))), floor, 1e-12)


def _reference_class_test(per_class: dict, fits: dict, outlier_z: float) -> dict[int, bool]:
    """The class test of the reference decision (module docstring): does the suspect cluster lie farther
    from the class's trusted images, relative to the rest of the class, than the other classes' suspect
    clusters do? Records ``reference_distance_z`` (and ``reference_ratio``, the trusted images' share of
    the suspect cluster over its share of the class) per class; ``True`` for every class when fewer than
    three classes have trusted images (no peers to compare with)."""
    with_ref = [c for c in fits if per_class[str(c)].get("reference_distance") is not None]
    if len(with_ref) < 3:
        return {c: True for c in fits}
    rec = [per_class[str(c)] for c in with_ref]
    dist_z = peer_z([r["reference_distance"] for r in rec], float(np.median([r["reference_distance_se"] for r in rec])))
    out = {c: True for c in fits}
    for c, r, z_c in zip(with_ref, rec, dist_z):
        r.update(reference_ratio=r["reference_share"] / r["poison_cluster_share"], reference_distance_z=float(z_c))
        out[c] = bool(z_c >= outlier_z)
    return out


def _decide_classes(per_class: dict, fits: dict, margin: np.ndarray, scores: np.ndarray, flagged: np.ndarray, *,
                    decision: str, size_threshold: float, silhouette_threshold: float, outlier_z: float,
                    reference_alpha: float, reference_tolerance: float, class_test: str = "outlier") -> None:
    """Decide every analysed class by ``decision``; fill in ``scores`` and ``flagged`` (in place)."""
    sil_z = robust_z([per_class[str(c)]["feature_silhouette"] for c in fits], floor=1e-3)
    stands_out = _reference_class_test(per_class, fits, outlier_z) if decision == "reference" else {}
    if class_test == "none":
        stands_out = {c: True for c in fits}
    for (c, (pos, in_poison, p)), z_c in zip(fits.items(), sil_z):
        info = per_class[str(c)]
        info["silhouette_z"] = float(z_c)
        if decision == "size":
            is_poisoned = info["poison_cluster_share"] <= size_threshold
        elif decision == "silhouette":
            is_poisoned = info["silhouette"] >= silhouette_threshold
        elif decision == "reference" and info["reference_p"] is not None:
            is_poisoned = (info["reference_p"] <= reference_alpha / max(1, len(fits))
                           and info["reference_share"] <= reference_tolerance * info["poison_cluster_share"]
                           and stands_out[c])
        else:
            is_poisoned = info["silhouette_z"] >= outlier_z
        info["poisoned"] = bool(is_poisoned)
        scores[pos] = float(is_poisoned) + (margin[pos] + 1.0) / 2.0
        flagged[pos] = is_poisoned & in_poison


def two_cluster_analysis(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    reduce: str = "pca",
    n_components: int = 10,
    decision: str = "auto",
    size_threshold: float = 0.35,
    silhouette_threshold: float = 0.10,
    outlier_z: float = 3.0,
    poison_cluster: str = "auto",
    reference: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    reference_alpha: float = 0.05,
    reference_tolerance: float = 1.0,
    class_test: str = "outlier",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The per-class reduce -> 2-means -> decide core shared with heatmap clustering.

    ``reference`` / ``reference_labels``: trusted clean feature rows (same space as ``features``) that
    decide the poison cluster under ``poison_cluster="auto"`` and the class under ``decision="reference"``
    (binomial test + class test, ``class_test``; module docstring).
    Returns ``(scores, flagged, cluster, margin, per_class_info)`` aligned with ``features`` rows;
    ``cluster`` is 1 for members of the chosen poison cluster and 0 otherwise.
    """
    decision = _check_options(reduce=reduce, decision=decision, reference=reference, reference_alpha=reference_alpha,
                              reference_tolerance=reference_tolerance, poison_cluster=poison_cluster,
                              size_threshold=size_threshold, class_test=class_test)
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if (reference is None) != (reference_labels is None):
        raise ValueError("reference and reference_labels go together")
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        reference_labels = np.asarray(reference_labels)
    n = len(labels)
    scores = np.full(n, 0.5)
    flagged = np.zeros(n, dtype=bool)
    cluster = np.zeros(n, dtype=np.int64)
    margin = np.zeros(n)
    per_class: dict[str, Any] = {}
    fits: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        per_class[str(int(c))], split = _split_class(
            features, pos, c, reduce=reduce, n_components=n_components, seed=seed, poison_cluster=poison_cluster,
            size_threshold=size_threshold, reference=reference, reference_labels=reference_labels)
        if split is not None:
            m, in_poison, p = split
            margin[pos] = m
            cluster[pos] = in_poison.astype(np.int64)
            fits[int(c)] = (pos, in_poison, p)
    _decide_classes(per_class, fits, margin, scores, flagged, decision=decision, size_threshold=size_threshold,
                    silhouette_threshold=silhouette_threshold, outlier_z=outlier_z, reference_alpha=reference_alpha,
                    reference_tolerance=reference_tolerance, class_test=class_test)
    return scores, flagged, cluster, margin, per_class


def _reduce_fit(x: np.ndarray, method: str, n_components: int, seed: int):
    """``(reduced x, map for new rows or None)``: the map sends reference rows into the same space."""
    if method == "none" or x.shape[1] <= n_components:
        return x.astype(np.float64), lambda r: np.asarray(r, dtype=np.float64)
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    if method == "fastica":
        return reduce_features(x, method, n_components, seed), None  # no reference mapping for FastICA
    # "ica": FastICA's own whitening (unit-variance components); the rotation FastICA then searches
    # for is orthogonal and changes no distance, so it is skipped. Full SVD solver: deterministic.
    whiten = method == "ica"
    pca = PCA(n_components=k, whiten=whiten, svd_solver="full", random_state=seed).fit(x)
    z = pca.transform(x)
    sd = np.maximum(z.std(0, keepdims=True), 1e-12) if whiten else np.ones((1, k))
    return z / sd, lambda r: pca.transform(np.asarray(r, dtype=np.float64)) / sd


@register_detector("activation_clustering", stage="classifier", unit="cluster")
def activation_clustering(
    model,
    dataset,
    *,
    reduce: str = "pca",
    n_components: int = 10,
    decision: str = "auto",
    size_threshold: float = 0.35,
    silhouette_threshold: float = 0.10,
    outlier_z: float = 3.0,
    poison_cluster: str = "auto",
    activations: np.ndarray | None = None,
    reference=None,
    reference_activations: np.ndarray | None = None,
    reference_alpha: float = 0.05,
    reference_tolerance: float = 1.0,
    class_test: str = "outlier",
    batch_size: int = 256,
    accelerator=None,
    image_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> DetectionResult:
    """Activation clustering on ``model``'s penultimate activations of ``dataset`` (labels as given).

    ``activations`` (``(N, D)`` in dataset order) skips the forward pass. ``reference``: a small labelled
    set of trusted clean images (``reference_activations`` skips its forward pass) that picks the poison
    cluster under ``poison_cluster="auto"`` and decides the class under ``decision="auto"`` (the
    binomial test at ``reference_alpha`` and the class test at ``outlier_z``, ``class_test="none"`` to
    skip it; module docstring). See the module docstring for the decision rules, the score, the shift the
    reference decision tolerates and the limits. Every process of an accelerate run gets the same result.
    """
    t0 = time.perf_counter()
    if activations is None:
        from sslguard.models.classifier import penultimate_activations

        _, out = penultimate_activations(model, dataset, batch_size=batch_size, accelerator=accelerator,
                                         image_size=image_size, progress=progress)
        activations = out["penultimate"]
    ref_labels = None
    if reference is not None:
        ref_labels = np.asarray(reference.labels)
        if reference_activations is None:
            from sslguard.models.classifier import penultimate_activations

            _, out = penultimate_activations(model, reference, batch_size=batch_size, accelerator=accelerator,
                                             image_size=image_size, progress=progress)
            reference_activations = out["penultimate"]
    t1 = time.perf_counter()
    scores, flagged, cluster, margin, per_class = two_cluster_analysis(
        activations, dataset.labels, reduce=reduce, n_components=n_components, decision=decision,
        size_threshold=size_threshold, silhouette_threshold=silhouette_threshold, outlier_z=outlier_z,
        poison_cluster=poison_cluster, reference=reference_activations if reference is not None else None,
        reference_labels=ref_labels, reference_alpha=reference_alpha, reference_tolerance=reference_tolerance,
        class_test=class_test, seed=seed)
    info = {"per_class": per_class, "reduce": reduce, "n_components": n_components, "decision": decision,
            "poison_cluster": poison_cluster, "size_threshold": size_threshold, "reference_alpha": reference_alpha,
            "reference_tolerance": reference_tolerance, "class_test": class_test,
            "silhouette_threshold": silhouette_threshold, "outlier_z": outlier_z,
            "flagged_classes": [int(k) for k, v in per_class.items() if v.get("poisoned")],
            "seconds_features": t1 - t0, "seconds_analysis": time.perf_counter() - t1}
    return DetectionResult("activation_clustering", np.asarray(dataset.keys), scores, flagged, 1.5,
                           {"cluster": cluster, "margin": margin, "label": np.asarray(dataset.labels)}, info)
