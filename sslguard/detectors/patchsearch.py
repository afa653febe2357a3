"""PatchSearch: find patch-trigger poisons in an SSL corpus by searching for the window that flips clusters.

After Tejankar et al., "Defending Against Patch-based Backdoor Attacks on Self-Supervised Learning",
CVPR 2023 (our own code, following the paper's algorithm):

1. k-means on the encoder's L2-normalised embeddings defines a *cluster model* (cosine similarity to
   the centroids); Grad-CAM of each image's cluster gives its most activating window
   (:mod:`sslguard.cam`).
2. A fixed *test set* of about ``test_size`` images is made of the images nearest each centroid. The
   *poison score* of a window is the number of test images from other clusters that move into the
   window's cluster when the window is pasted on them: a trigger pulls any image to its cluster, an object
   part does not. A move into the cluster's twin (its mutual nearest centroid) counts too, and above
   ``group_k`` clusters a move into one of its nearest clusters; the test images of that group are not
   counted (``twin_clusters``, ``group_k``): k-means may cut one trigger group into pieces (see PoisonCAM).
3. *Iterative search*: scoring every image is costly, so each round scores ``samples_per_round``
   random unscored images of every remaining cluster (fewer, at least one, when that would exceed
   ``round_windows``) and drops the ``prune_fraction`` of clusters whose best score is lowest; when one
   cluster remains, up to ``final_samples`` of its members are scored.
4. A *poison classifier* (:mod:`sslguard.poison_classifier`, shared with PoisonCAM; a small CNN on
   pixels, as the paper trains a ResNet-18) learns to tell clean images from clean images carrying
   one of the ``n_top_windows`` top-scored windows (pasted at random places; clean images carrying
   random windows are negatives too, so "any pasted square" is not the rule it learns). It scores the
   whole corpus. Flagged: logits above the valley of the corpus' logits (Otsu), never inside the bulk of
   held-out clean images (:func:`sslguard.detectors.base.classifier_cut`, shared with PoisonCAM). The
   paper's cut, probability 0.5, flagged none of the planted or quickstart poisons while ranking them
   first. Nothing is flagged when the top windows do not pull, at their median,
   ``paste_rate`` of the test images they are pasted on into their cluster: the search then found no
   trigger (an encoder that learned none), and cutting the logits' tail would remove clean images. Nor
   when flat copies of the top windows (each filled with its mean colour) explain their pull
   (``colour_control``, :func:`~sslguard.detectors.corpus.colour_explains`: the copies reach ``paste_rate``
   and the pattern pulls no majority of the images they leave out): the encoder then groups a colour, not a
   pattern (a clean CIFAR-10 subset: windows of blue sky from ships and aeroplanes pulled 0.89 into their
   cluster and flagged 54 clean images before this control; ``benchmarks/clean_corpora.md``).

Defaults (the measurements behind each: ``benchmarks/defaults.md#patchsearch``):

- the Otsu cut with the clean bound at ``z=3.5`` instead of the paper's probability cut.
  Evidence: benchmarks/defaults.md#patchsearch (the cut).
- ``paste_rate=0.5``: PoisonCAM's paste-check bar. Evidence: benchmarks/defaults.md#patchsearch (the cut).
- ``twin_clusters=True``: as PoisonCAM's. Evidence: benchmarks/twins.md.
- ``k=20``, ``window_fraction=0.375``, ``n_top_windows=20``, ``classifier_images=2000``,
  ``classifier_epochs=4``: shared with PoisonCAM. Evidence: benchmarks/defaults.md#poisoncam.
- ``test_per_cluster=16``, ``samples_per_round=8``, ``prune_fraction=0.25``, ``final_samples=64``: the
  search's sample sizes. Evidence: benchmarks/defaults.md#patchsearch (the search).

Limits: PatchSearch assumes a *patch* trigger. Blend, CTRL and WaNet triggers are global: no window
carries them, so the search finds no flipping window and the classifier learns nothing useful. A
window smaller than the trigger carries only part of it. Like every SSL-stage defence it finds only
what the encoder learned: if triggered test images do not move to the target cluster, nothing flips.
The test set is the images nearest the centroids, so a trigger cluster's own members are excluded from
its score (they are in the same cluster already). Above ``test_size`` clusters the test set holds one
image of ``test_size`` random clusters, so some clusters have no test image. Above ``round_windows``
clusters a cluster's first round rests on a single window: a trigger piece whose one Grad-CAM window
missed the trigger can be dropped (other pieces of the same group remain).

The colour control rejects a trigger that is one flat colour where the windows fall inside it (their flat
copies are themselves). On the quickstart's encoder the top windows' flat copies pulled 0.14-0.18 on three
kernel sets, far under the bar; with another target class up to 0.62, and the pattern pulled nearly all the
rest (``benchmarks/quickstart_variants.md``). PoisonCAM's exhaustive-search windows came nearer, so its
control is off by default.

Cost: the Grad-CAM pass and the classifier's scoring are one pass over the corpus; the search is
``windows scored x test images`` forward passes, with the test set near ``test_size`` and at most
``max(round_windows, clusters left)`` windows per round over about ``log(k / 20) / log(4 / 3) + 11``
rounds. Before, the test set (16 images of every cluster) and the rounds (8 windows of every cluster)
both grew with k, so the search grew with k squared (the *pairs* rows of ``benchmarks/fine_k.md``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sslguard.cam import cluster_cam, window_size
from sslguard.cluster import ClusterResult
from sslguard.detectors.base import DetectionResult, classifier_cut, register_detector
from sslguard.detectors.corpus import Corpus, colour_explains, prepare_embeddings_and_clusters
from sslguard.poison_classifier import classifier_logits, crop_windows, paste_many, train_poison_classifier

log = logging.getLogger(__name__)


def random_positions(rng: np.random.Generator, n: int, side: int, win: int) -> np.ndarray:
    return np.stack([rng.integers(0, side - win + 1, n), rng.integers(0, side - win + 1, n)], 1)


@dataclass(frozen=True)
class _TestSet:
    """The fixed test set: the images nearest each centroid, their clusters and fixed paste positions."""

    pos: np.ndarray
    imgs: torch.Tensor
    cluster: np.ndarray
    at: np.ndarray


@dataclass(frozen=True)
class _Search:
    """The iterative search's outcome: flip counts (-1 = not scored) and the clusters' fate."""

    poison_score: np.ndarray
    remaining: list
    pruned_order: list
    rounds: int


def _make_test_set(corpus: Corpus, clusters: ClusterResult, test_per_cluster: int, test_size: int,
                   rng: np.random.Generator, side: int, win: int) -> _TestSet:
    """Step 2: the images nearest each centroid (``test_size // k`` of each, at most ``test_per_cluster``;
    above ``test_size`` clusters, the nearest image of ``test_size`` clusters drawn at random), each with a
    fixed paste position. Its size stays near ``test_size`` at any k, so a flip count costs the same."""
    per = min(test_per_cluster, test_size // max(1, clusters.k))
    which = np.arange(clusters.k)
    if per < 1:
        nonempty = np.flatnonzero(clusters.sizes > 0)
        which = np.sort(rng.choice(nonempty, size=min(test_size, len(nonempty)), replace=False))
        per = 1
    test = []
    for c in which:
        mem = clusters.members(c)
        order = np.argsort(-clusters.distances[mem] if clusters.spherical else clusters.distances[mem], kind="stable")
        test.append(mem[order[:per]])
    test_pos = np.concatenate(test)
    test_imgs = corpus.images(test_pos)
    test_cluster = clusters.assignments[test_pos]
    test_at = random_positions(rng, len(test_pos), side, win)
    return _TestSet(test_pos, test_imgs, test_cluster, test_at)


def _flip_counts(corpus: Corpus, boxes: np.ndarray, assign: np.ndarray, test: _TestSet,
                 positions: np.ndarray, flat: bool = False) -> np.ndarray:
    """Flip counts of the Grad-CAM windows of ``positions`` (batched: every window x every test image);
    ``flat``: of their flat mean-colour copies (:meth:`Corpus.flat_copies`)."""
    T = len(test.pos)
    per = max(1, corpus.batch_size // T)

    @torch.no_grad()
    def one(s: int) -> np.ndarray:
        pos = positions[s:s + per]
        src = corpus.images(pos)
        pasted = []
        for i, p in enumerate(pos):
            x, y, w, h = (int(v) for v in boxes[p])
            patch = src[i, :, y:y + h, x:x + w]
            if flat:
                patch = corpus.flat_copies([patch])[0]
            pasted.append(paste_many(test.imgs, [patch] * T, test.at))
        new = corpus.model(torch.cat(pasted)).argmax(1).view(len(pos), T).cpu().numpy()
        g = corpus.groups[assign[pos]]  # (windows, k): the clusters an arrival may land in
        into = np.take_along_axis(g, new, axis=1)
        outside = ~g[:, test.cluster]
        return (into & outside).sum(1)

    parts = corpus.map(one, list(range(0, len(positions), per)))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _iterative_search(corpus: Corpus, clusters: ClusterResult, boxes: np.ndarray, test: _TestSet,
                      rng: np.random.Generator, *, samples_per_round: int, round_windows: int, prune_fraction: float,
                      final_samples: int) -> _Search:
    """Step 3: score samples of every remaining cluster, drop the lowest, until one cluster remains.

    A round scores ``samples_per_round`` windows of each remaining cluster, fewer (at least one) when that
    would exceed ``round_windows``: at large k the first rounds would otherwise cost k times the test set."""
    assign = clusters.assignments
    members = [clusters.members(c) for c in range(clusters.k)]
    poison_score = np.full(len(assign), -1, np.int64)
    remaining = [c for c in range(clusters.k) if clusters.sizes[c] > 0]
    pruned_order: list[int] = []
    rounds = 0
    while True:
        rounds += 1
        m = final_samples if len(remaining) == 1 else \
            min(samples_per_round, max(1, round_windows // len(remaining)))
        for c in remaining:
            unscored = members[c][poison_score[members[c]] < 0]
            if len(unscored):
                pick = np.sort(rng.choice(unscored, size=min(m, len(unscored)), replace=False))
                poison_score[pick] = _flip_counts(corpus, boxes, assign, test, pick)
        if len(remaining) == 1:
            break
        best = {c: poison_score[members[c]].max(initial=-1) for c in remaining}
        n_drop = max(1, int(np.floor(prune_fraction * len(remaining))))
        ranked = sorted(remaining, key=lambda c: (best[c], -c))  # lowest first; ties: higher id dropped first
        pruned_order += ranked[:n_drop]
        remaining = [c for c in remaining if c not in ranked[:n_drop]]
    return _Search(poison_score, remaining, pruned_order, rounds)


def _train_and_score(corpus: Corpus, clusters: ClusterResult, boxes: np.ndarray, search: _Search,
                     rng: np.random.Generator, *, n_top_windows: int, classifier_images: int,
                     classifier_epochs: int, seed: int):
    """Step 4: the poison classifier on the top windows, applied to the corpus.

    ``(logits, top positions, scored positions, clean pool, clean training positions)``."""
    n, poison_score = len(clusters.assignments), search.poison_score
    scored = np.flatnonzero(poison_score >= 0)
    top = scored[np.argsort(-poison_score[scored], kind="stable")[:n_top_windows]]
    patches = crop_windows(corpus.images(top), boxes[top])
    # clean pool: clusters in the order they were dropped (least suspicious first)
    pruned = search.pruned_order
    clean_pool = np.concatenate([clusters.members(c) for c in pruned]) if pruned else np.arange(n)
    clean_pos = np.sort(rng.choice(clean_pool, size=min(classifier_images, len(clean_pool)), replace=False))
    clf = train_poison_classifier(corpus, clean_pos, patches, rng=rng, epochs=classifier_epochs, seed=seed)
    scores = classifier_logits(clf, corpus, np.arange(n))
    return scores, top, scored, clean_pool, clean_pos


def _pull_rate(poison_score: np.ndarray, assign: np.ndarray, test: _TestSet, top: np.ndarray,
               groups: np.ndarray) -> tuple[float, int]:
    """Median share of the other clusters' test images that the top windows pull into their cluster's group
    (:meth:`Corpus.group`; the group's own test images are not counted), and the number of pastes it rests on."""
    n_outside = {c: int((~groups[c][test.cluster]).sum()) for c in np.unique(assign[top])} if len(top) else {}
    top_rates = np.asarray([poison_score[p] / max(1, n_outside[assign[p]]) for p in top], dtype=np.float64)
    return (float(np.median(top_rates)) if len(top_rates) else 0.0), sum(n_outside[assign[p]] for p in top)


def _evidence(top_rate: float, flat_rate: float | None, paste_rate: float, n_pastes: int) -> tuple[bool, str]:
    """Whether the top windows are trigger evidence, and the sentence that says why (or why not)."""
    if top_rate < paste_rate:
        return False, (f"none: the top windows pull a median {top_rate:.2f} of pasted images (< {paste_rate}), "
                       "nothing is flagged")
    if colour_explains(top_rate, flat_rate, paste_rate, n_pastes):
        return False, (f"none: the top windows pull a median {top_rate:.2f}, but flat copies of their mean colour "
                       f"pull {flat_rate:.2f} (>= {paste_rate}) and the pattern adds too little to that: the encoder "
                       "groups a colour, not a pattern; nothing is flagged")
    if flat_rate is not None and flat_rate >= paste_rate:
        return True, (f"trigger windows (median pull rate {top_rate:.2f}; their flat copies pull {flat_rate:.2f}, "
                      "and the pattern pulls most of the images those leave out)")
    return True, f"trigger windows (median pull rate {top_rate:.2f})"


def _result(dataset, assign, boxes, test: _TestSet, search: _Search, scores, top, scored, clean_pool, clean_pos, *,
            top_rate, flat_rate, paste_rate, n_pastes, z, win, timings, t_start, params) -> DetectionResult:
    """The evidence bar, the flags, the run's record and the :class:`DetectionResult`."""
    n, poison_score = len(assign), search.poison_score
    # Evidence: a trigger window pulls most images it is pasted on into its cluster; a clean object part
    # does not, nor does a flat patch of the window's colour. Otherwise the search ended on a cluster
    # without a trigger (an encoder that learned none): the logits still rank, but nothing is flagged.
    threshold, cut_info = classifier_cut(scores, np.setdiff1d(clean_pool, clean_pos), z)
    found, evidence = _evidence(top_rate, flat_rate, paste_rate, n_pastes)
    flagged = scores > threshold if found else np.zeros(n, dtype=bool)
    timings["total_s"] = time.perf_counter() - t_start
    info: dict[str, Any] = {
        "evidence": evidence,
        "top_window_pull_rate": top_rate,
        "flat_pull_rate": flat_rate,
        "cut": cut_info,
        "final_cluster": search.remaining,
        "pruned_order": search.pruned_order,
        "rounds": search.rounds,
        "n_scored": int(len(scored)),
        "top_windows": [{"index": int(dataset.keys[p]), "box": boxes[p].tolist(), "poison_score": int(poison_score[p])}
                        for p in top],
        "test_size": int(len(test.pos)),
        "window": win,
        "timings": timings,
        "params": params,
    }
    log.info("patchsearch: final cluster %s, flagged %d of %d in %.1fs", search.remaining, int(flagged.sum()), n,
             timings["total_s"])
    return DetectionResult("patchsearch", np.asarray(dataset.keys), scores, flagged, float(threshold),
                           {"box": boxes, "cluster": assign.copy(), "poison_score": poison_score}, info)


@register_detector("patchsearch", stage="ssl")
def patchsearch(
    *,
    backbone: torch.nn.Module,
    dataset,
    embeddings: np.ndarray | None = None,
    clusters: ClusterResult | None = None,
    k: int = 20,
    window_fraction: float = 0.375,
    test_per_cluster: int = 16,
    test_size: int = 320,
    samples_per_round: int = 8,
    round_windows: int = 160,
    prune_fraction: float = 0.25,
    final_samples: int = 64,
    n_top_windows: int = 20,
    classifier_images: int = 2000,
    classifier_epochs: int = 4,
    paste_rate: float = 0.5,
    twin_clusters: bool = True,
    group_k: int | None = 10,
    colour_control: bool = True,
    z: float = 3.5,
    batch_size: int = 256,
    image_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    accelerator=None,
) -> DetectionResult:
    """Score every image of ``dataset`` with PatchSearch (see the module docstring).

    Args:
        backbone, dataset, embeddings, clusters, k, seed, batch_size, image_size, device, accelerator: as
            for :func:`sslguard.detectors.poisoncam.poisoncam`.
        window_fraction: side of the Grad-CAM window (the candidate trigger) as a fraction of the image side.
        test_per_cluster: images nearest each centroid in the test set, at most.
        test_size: the test set's size: ``test_size // k`` images per cluster (at most ``test_per_cluster``),
            or the nearest image of ``test_size`` random clusters when k exceeds it. A flip count costs
            one forward pass per test image, so the search's cost does not grow with k through the test set.
        samples_per_round: random unscored images per remaining cluster scored in each round, at most.
        round_windows: windows scored per round, at most (each remaining cluster still gets one): with
            k clusters the first round would otherwise score ``samples_per_round * k``.
        prune_fraction: share of remaining clusters dropped after each round (lowest best score first).
        final_samples: members of the last remaining cluster scored after the rounds.
        n_top_windows: top-scored windows the poison classifier is trained on.
        classifier_images: clean images (from the clusters dropped first) the classifier is trained on.
        classifier_epochs: passes over them.
        paste_rate: the evidence bar: the top windows must, at their median, pull at least this share of
            the test images from other clusters into theirs (as PoisonCAM's paste check); below it the
            search found no trigger and nothing is flagged.
        twin_clusters: a window that pulls test images into its cluster's twin (the mutual nearest
            centroid) counts them too, as in PoisonCAM: k-means may split one trigger group in two.
        group_k: above this many clusters each cluster's ``ceil(k / group_k) - 1`` nearest clusters count
            as arrivals too, as in PoisonCAM (``None``: never).
        colour_control: the top windows are no evidence when flat copies of them (each filled with its mean
            colour) explain their pull (:func:`~sslguard.detectors.corpus.colour_explains`): the pattern, not
            the colour, must do the pulling (``info["flat_pull_rate"]``).
        z: robust z of the held-out clean images' MAD bound that the flag threshold never goes under
            (:func:`sslguard.detectors.base.classifier_cut`).

    Scores: the classifier's logit for every image (higher = more suspicious); evidence ``box`` is the
    Grad-CAM window, ``cluster`` the k-means cluster, ``poison_score`` the flip count (-1 = not scored).
    """
    if not 0.0 < prune_fraction < 1.0:
        raise ValueError(f"prune_fraction must be in (0, 1), got {prune_fraction}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng([seed, 5151])
    embeddings, clusters = prepare_embeddings_and_clusters(backbone, dataset, embeddings, clusters, k=k, seed=seed,
                                                           batch_size=batch_size, image_size=image_size)
    timings["embed_cluster_s"] = time.perf_counter() - t_start
    was_training = backbone.training
    corpus = Corpus(backbone, dataset, clusters.centroids, batch_size, image_size, device, twins=twin_clusters,
                    accelerator=accelerator, group_k=group_k)
    n, assign = len(dataset), clusters.assignments
    side = int(corpus.images(np.arange(min(1, n))).shape[-1])
    win = window_size(side, window_fraction)
    try:
        # 1. Grad-CAM window of every image.
        t = time.perf_counter()
        cam = cluster_cam(backbone, dataset, clusters.centroids, window=win, targets=assign, batch_size=batch_size,
                          image_size=image_size, device=corpus.device, accelerator=accelerator)
        boxes = cam.boxes
        timings["gradcam_s"] = time.perf_counter() - t
        test = _make_test_set(corpus, clusters, test_per_cluster, test_size, rng, side, win)
        t = time.perf_counter()
        search = _iterative_search(corpus, clusters, boxes, test, rng, samples_per_round=samples_per_round,
                                   round_windows=round_windows, prune_fraction=prune_fraction, final_samples=final_samples)
        timings["search_s"] = time.perf_counter() - t
        t = time.perf_counter()
        scores, top, scored, clean_pool, clean_pos = _train_and_score(
            corpus, clusters, boxes, search, rng, n_top_windows=n_top_windows, classifier_images=classifier_images,
            classifier_epochs=classifier_epochs, seed=seed)
        timings["classifier_s"] = time.perf_counter() - t
        top_rate, n_pastes = _pull_rate(search.poison_score, assign, test, top, corpus.groups)
        flat_rate = None
        if colour_control and top_rate >= paste_rate and len(top):
            # the colour control: the same windows flattened to their mean colour, on the same test images
            flat_scores = np.full(n, -1, np.int64)
            flat_scores[top] = _flip_counts(corpus, boxes, assign, test, top, flat=True)
            flat_rate = _pull_rate(flat_scores, assign, test, top, corpus.groups)[0]
    finally:
        backbone.train(was_training)
    params = {"k": clusters.k, "window_fraction": window_fraction, "test_per_cluster": test_per_cluster,
              "test_size": test_size, "samples_per_round": samples_per_round, "round_windows": round_windows,
              "group_k": group_k, "prune_fraction": prune_fraction,
              "final_samples": final_samples, "n_top_windows": n_top_windows,
              "classifier_images": classifier_images, "classifier_epochs": classifier_epochs, "seed": seed,
              "paste_rate": paste_rate, "twin_clusters": twin_clusters, "colour_control": colour_control, "z": z,
              "batch_size": batch_size, "image_size": image_size}
    return _result(dataset, assign, boxes, test, search, scores, top, scored, clean_pool, clean_pos,
                   top_rate=top_rate, flat_rate=flat_rate, paste_rate=paste_rate, z=z, win=win, timings=timings,
                   t_start=t_start, params=params, n_pastes=n_pastes)
