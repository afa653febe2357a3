"""PoisonCAM: find SSL poisons by cluster activation masking.

After Qian et al. (2023), "Erasing Self-Supervised Learning Backdoor by Cluster Activation Masking"
(arXiv preprint). The cluster model of PatchSearch (k-means centroids of the encoder's normalised
embeddings, an image scored by cosine similarity to each centroid) is probed by *masking*: erasing
the trigger region of a poisoned image lowers its cluster activation far more than erasing any region
of a clean image, because in a poisoned corpus the encoder has tied the trigger to a cluster. The paper
reports 96% trigger-detection accuracy on poisoned ImageNet-100 where PatchSearch reached 3%.

This implementation (our own code, following the idea) runs in four steps:

1. **Probe every cluster**: ``n_probe`` random members of each cluster (fewer, at least 4, when k clusters
   would need more than ``probe_budget`` searches) are masked window by window (an exhaustive search).
   A window is erased by inpainting it from its surroundings (``fill="context"``,
   :func:`sslguard.cam.context_fill`). Each probe keeps the window whose erasure lowers its own-cluster
   activation most, and the drop under each whole-image eraser (``erasers``).
2. **Confirm** a cluster by the *paste check*: the windows of its ``n_paste_windows`` highest-drop probes,
   pasted at random places onto ``n_paste_test`` non-members, must move at least ``paste_rate`` of them
   into the cluster: a trigger also *brings* images in, a part of a clean object rarely does. With
   ``colour_control`` (off, see *Limits*) flat copies of the windows must not explain the pull
   (:func:`~sslguard.detectors.corpus.colour_explains`). **Global
   triggers**: the same check with what a whole-image eraser (:mod:`sslguard.erasers`) took from the top
   probes, *added* to non-members; the residuals of as many random non-members must pull at most half as many,
   and the residuals' *mean* at least half as many (a trigger is one pattern in every poison and survives the
   mean; a cluster of fine textures takes in any image whose detail one member's residual raises), or, for a
   trigger learned too weakly for a majority to join, the members' residuals must be mostly one pattern that
   pulls non-members in more than as much other detail does (:mod:`~sslguard.detectors.global_trigger`). Every
   cluster of ``min_cluster_size`` is checked (``support_z=-inf``): the masking drop measures how *fragile* a
   cluster is, not whether it holds a trigger (on the README's quickstart clean clusters lost more than the
   trigger cluster). An arrival in the cluster's *twin* (mutual nearest centroid) counts, and above ``group_k``
   clusters one in its ``ceil(k / group_k) - 1`` nearest (:func:`~sslguard.detectors.corpus.cluster_groups`):
   k-means splits a trigger group in two (``benchmarks/twins.md``) and into about p * k pieces at fine k
   (``fine_k.md``).
   **2b. A larger window**: while no cluster passed by its windows, the next of ``larger_windows`` (a
   trigger larger than the window is erased and pasted only in part) on the clusters that pulled most; it
   carries enough of a clean object to pull too, so a cluster also needs its top windows to be pixel copies
   of one pattern (:func:`~sslguard.cam.window_consistency` >= ``min_consistency``). Steps 3-4 use it.
3. **Mask the corpus** against the confirmed clusters: every image gets Grad-CAM of its nearest confirmed
   cluster c* and the drop of c*'s activation when that window is masked; the likeliest poisons (members,
   and as many again by drop) whose window did not clear the threshold are refined by the exhaustive
   search. Threshold: the MAD rule on ``n_null`` non-members scored the same way. When an eraser passed and
   erasing moves a larger share of the members above its threshold than masking does (SIG), the drop is that
   of the whole image under c*'s eraser. With no cluster confirmed there is no evidence of a trigger: each image's
   own-cluster Grad-CAM drop ranks it, nothing is flagged (``info["evidence"]`` says so), step 4 is skipped.
4. **Poison classifier** (the paper's last step, which PatchSearch shares; :mod:`sslguard.poison_classifier`):
   the masked windows (or eraser residuals) of the ``n_top_windows`` confirmed-cluster members with the
   largest drop above the threshold are the trigger (where fewer clear it, completed by the members' own best
   windows if, pasted, they pull ``paste_rate`` of non-members in: ``info["classifier"]["top_from"]``); a small
   CNN learns to tell clean images from clean images carrying one, and scores the corpus (the drops stay in
   ``evidence["mask_drop"]``). Flagged: logit above the valley of the corpus' logits (Otsu), never below the
   MAD bound of held-out clean images.

Defaults (the signature's values) and the measurements that chose them: ``benchmarks/defaults.md#poisoncam``;
in short, a window of side w on a stride s fully covers any trigger of side <= w - s + 1, ``z`` is the usual
MAD cut (Iglewicz & Hoaglin), ``paste_rate`` asks a majority to join (the learned check's bar), and the
classifier's settings are PatchSearch's.

Limits: the detector finds what the encoder learned: a trigger not tied to a cluster (small, short training, a weak
encoder) changes nothing when masked, and nothing is confirmed. A trigger larger than the largest window is erased
only in part. Step 2b asks for pixel copies (clean digit strokes reach 0.98): poisons recompressed or resized after
the trigger was pasted, or a trigger much smaller than the larger window on busy backgrounds, fall under the bar
there. Windows are pasted at random places: a trigger that acts at one position only, or only with its surroundings,
may fail. A global trigger in the low frequencies (a colour cast, a warp such as WaNet's) survives the erasers, and
one that differs from poison to poison (sample-specific noise) averages away in the mean residual; a faint blend
that few pasted images follow is confirmed only where it is most of its members' fine detail (``min_shared``). Step
3 scores the corpus one way for all confirmed clusters, by windows unless erasing moves a larger share of their
members. Step 4 inherits the limits of :mod:`sslguard.poison_classifier`: a wrongly confirmed cluster teaches it an
object part, and it flags the images that show it. A trigger cluster beside its clean twin loses little activation
when masked (the poison crosses to the twin), so its drops can all stay under the threshold (the quickstart,
``twins_epyc.md``); then step 4 rests on the members' windows passing the paste check, and an eraser-confirmed
cluster has no such fallback. The trigger must be a distinct cluster at the chosen ``k`` (groups assume a trigger
group's pieces are each other's nearest clusters: ``fine_k.md``). The colour control is off (PatchSearch's is on):
it was not needed on the clean CIFAR-10 subset, on the quickstart flat copies of the trigger windows came near the
bar on some CPUs (``clean_corpora.md``), and it rejects a one-colour trigger that fills the window.

Cost: step 1 runs ``sum(min(size, n_probe_c))`` exhaustive searches (``n_probe_c`` from ``probe_budget``: 640
searches up to 160 clusters, 4 per cluster above), step 2 pastes ``(1 + len(erasers)) x n_paste_windows x
n_paste_test`` images per cluster (the shared-pattern path reads ``n_paste_test`` members per eraser, and pastes
twice ``n_paste_windows x n_paste_test`` only where they share a pattern), step 2b (only when no window passed)
repeats step 1 per larger window, step 3 is one Grad-CAM pass plus the refined candidates, step 4 one pass of the
poison classifier. With ``cluster.k: auto`` (k = N / 100) every term is at most linear in N (``fine_k.md``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from sslguard.cam import sliding_boxes, window_consistency, window_size
from sslguard.cluster import ClusterResult
from sslguard.detectors.base import DetectionResult, classifier_cut, register_detector, robust_threshold
from sslguard.detectors.corpus import Corpus, colour_explains, nearest_confirmed, prepare_embeddings_and_clusters
from sslguard.detectors.global_trigger import confirm_by_residual
from sslguard.erasers import ERASERS, residuals
from sslguard.poison_classifier import classifier_logits, crop_windows, train_poison_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Run:
    """What every step shares: the corpus under the cluster model, its clusters and the window geometry."""

    corpus: Corpus
    clusters: ClusterResult
    embeddings: np.ndarray
    win: int
    grid: np.ndarray
    fill: str

    @property
    def n(self) -> int:
        return len(self.corpus.dataset)

    @property
    def assign(self) -> np.ndarray:
        return self.clusters.assignments

    @property
    def all_pos(self) -> np.ndarray:
        return np.arange(self.n)


@dataclass(frozen=True)
class _Probes:
    """Step 1's probes: position, cluster, best masking drop and its window."""

    pos: np.ndarray
    cluster: np.ndarray
    drop: np.ndarray
    box: np.ndarray
    eraser_drop: dict  # eraser -> drop of each probe's cluster activation when the whole image is erased


@dataclass(frozen=True)
class _Confirmation:
    """Step 2's outcome: median probe drop per cluster, per-cluster statistics, confirmed clusters."""

    med: np.ndarray
    stats: dict
    confirmed: list
    erasers: dict  # confirmed cluster -> the eraser whose residuals (and their mean) pulled images into it


@dataclass(frozen=True)
class _Masking:
    """Step 3's outcome: masking drop, window and target cluster per image, and the MAD threshold."""

    scores: np.ndarray
    boxes: np.ndarray
    target_of: np.ndarray
    threshold: float
    mode: str
    refined: dict


def _make_run(backbone, dataset, embeddings, clusters, *, window_fraction, stride_fraction, fill, batch_size,
              image_size, device, twin_clusters, group_k, accelerator=None) -> _Run:
    """The corpus under the cluster model, with the masking window and the exhaustive search grid."""
    corpus = Corpus(backbone, dataset, clusters.centroids, batch_size, image_size, device, twins=twin_clusters,
                    accelerator=accelerator, group_k=group_k)
    side = int(corpus.images(np.arange(min(1, len(dataset)))).shape[-1])
    win = window_size(side, window_fraction)
    grid = sliding_boxes((side, side), win, max(1, window_size(side, stride_fraction)))
    return _Run(corpus, clusters, embeddings, win, grid, fill)


def probes_per_cluster(k: int, n_probe: int, probe_budget: int, min_probe: int = 4) -> int:
    """Members of each cluster searched in step 1: ``n_probe``, fewer when ``k`` clusters would exceed
    ``probe_budget`` searches in all, never fewer than ``min_probe`` (or ``n_probe`` when that is smaller)."""
    return min(n_probe, max(min_probe, probe_budget // max(1, k)))


def _probe_clusters(run: _Run, rng: np.random.Generator, n_probe: int, erasers=(), only=None) -> _Probes:
    """Step 1: a sample of every cluster's members (``n_probe`` each; of the clusters ``only``, when given), each
    under its best mask (exhaustive search) and under each whole-image eraser."""
    probe_pos, probe_cluster = [], []
    for c in (range(run.clusters.k) if only is None else only):
        mem = run.clusters.members(c)
        if len(mem):
            pick = np.sort(rng.choice(mem, size=min(n_probe, len(mem)), replace=False))
            probe_pos.append(pick)
            probe_cluster.append(np.full(len(pick), c))
    probe_pos, probe_cluster = np.concatenate(probe_pos), np.concatenate(probe_cluster)
    probe_drop, probe_box = run.corpus.search(probe_pos, probe_cluster, run.grid, run.fill)
    eraser_drop = run.corpus.eraser_drops(probe_pos, probe_cluster, erasers) if erasers else {}
    return _Probes(probe_pos, probe_cluster, probe_drop, probe_box, eraser_drop)


def _confirm_by_paste(run: _Run, probes: _Probes, c: int, mine: np.ndarray, paste_rng: np.random.Generator,
                      n_paste_windows: int, n_paste_test: int, paste_rate: float, colour_control: bool,
                      seed: int) -> tuple[float, float | None, bool]:
    """Share of non-members that cluster ``c``'s top probe windows, pasted on them, pull into ``c``; and,
    with ``colour_control`` when that reaches ``paste_rate``, the share their flat mean-colour copies pull
    (``None`` otherwise); and whether those explain the pull (:func:`colour_explains`)."""
    # the other half of the causal evidence: a trigger cluster's windows also *bring* other
    # images into it, while a clean cluster's parts (what its members' masks erased) rarely do
    mine_pos = np.flatnonzero(mine)
    pick = mine_pos[np.argsort(-probes.drop[mine_pos], kind="stable")[:n_paste_windows]]
    patches = crop_windows(run.corpus.images(probes.pos[pick]), probes.box[pick])
    others = np.flatnonzero(~np.isin(run.assign, run.corpus.group(c)))
    test_pos = np.sort(paste_rng.choice(others, size=min(n_paste_test, len(others)), replace=False))
    rate = run.corpus.paste_rate(patches, test_pos, c, paste_rng)
    if not colour_control or rate < paste_rate:
        return rate, None, False
    # the colour control, on its own stream so the other clusters' paste tests draw as without it
    flat = run.corpus.paste_rate(run.corpus.flat_copies(patches), test_pos, c, np.random.default_rng([seed, 4244, c]))
    return rate, flat, colour_explains(rate, flat, paste_rate, len(patches) * len(test_pos))


def _confirm_clusters(run: _Run, probes: _Probes, paste_rng: np.random.Generator, *, confirm_z: float,
                      min_cluster_size: int, paste_check: bool, support_z: float, paste_rate: float,
                      n_paste_windows: int, n_paste_test: int, colour_control: bool = True,
                      seed: int = 0, min_shared: float | None = None) -> _Confirmation:
    """Step 2: confirm a cluster by its masking drop above ``confirm_z``, or by the paste check."""
    sizes = run.clusters.sizes
    med = np.full(run.clusters.k, -np.inf)
    cand_stats, confirmed, erasers = {}, [], {}
    for c in range(run.clusters.k):
        mine = probes.cluster == c
        if mine.sum() < 2 or (~mine).sum() < 2:
            continue
        med[c] = float(np.median(probes.drop[mine]))
        thr_c, null_med, null_scale = robust_threshold(probes.drop[~mine], confirm_z)
        rz = (med[c] - null_med) / null_scale
        cand_stats[c] = {"size": int(sizes[c]), "median_drop": med[c], "robust_z": rz,
                         "threshold": thr_c if np.isfinite(thr_c) else None}
        if sizes[c] < min_cluster_size:
            continue
        if med[c] > thr_c:
            confirmed.append(c)
            cand_stats[c]["confirmed_by"] = "masking"
        elif paste_check and rz >= support_z:
            rate, flat, colour = _confirm_by_paste(run, probes, c, mine, paste_rng, n_paste_windows, n_paste_test,
                                                   paste_rate, colour_control, seed)
            cand_stats[c]["paste_rate"] = rate
            cand_stats[c]["paste_into"] = run.corpus.group(c).tolist()
            if flat is not None:
                cand_stats[c]["flat_paste_rate"] = flat
            window_ok = rate >= paste_rate and not colour
            if flat is not None and not window_ok and rate >= paste_rate:
                cand_stats[c]["rejected_by"] = "colour: flat copies of its windows pull as well"
            # a global trigger (blend, SIG) is carried by what a whole-image eraser removes; a cluster whose
            # windows pull is confirmed by them, and its eraser kept for step 3 in case masking any one window
            # moves few of its members (SIG's stripes: a window of them pulls, erasing one leaves the rest)
            passed = {}
            if probes.eraser_drop:
                stats, passed = confirm_by_residual(run, probes, c, mine, n_paste_windows=n_paste_windows,
                                                    n_paste_test=n_paste_test, paste_rate=paste_rate, seed=seed,
                                                    min_shared=min_shared)
                cand_stats[c].update(stats)
            # the residual path first (the stronger evidence), then the larger pull
            best = max(passed, key=lambda e: (passed[e][0] == "residual", passed[e][1])) if passed else None
            if best is not None:
                erasers[c] = best
            if window_ok or best is not None:
                confirmed.append(c)
                cand_stats[c]["confirmed_by"] = "masking+paste" if window_ok else f"eraser {best}+{passed[best][0]}"
    return _Confirmation(med, cand_stats, confirmed, erasers)


def _grow_window(run: _Run, conf: _Confirmation, n_probe: int, probe_budget: int, *, fractions: tuple,
                 stride_fraction: float, min_consistency: float, paste_rate: float,
                 n_paste_windows: int, n_paste_test: int, colour_control: bool,
                 seed: int) -> tuple[_Run, _Confirmation]:
    """Step 2b: while no cluster passed by its windows, the next larger window of ``fractions``: the
    ``probe_budget // n_probe`` clusters whose windows pulled most in step 2 (a trigger larger than the window
    still pulls in part) are probed again with ``n_probe`` members each, and confirmed when their top windows are
    copies of one pattern (:func:`~sslguard.cam.window_consistency` at least ``min_consistency``) and pass the
    paste check. Returns the run at the window used from here on and the confirmation with any new clusters."""
    side = int(run.grid[:, 0].max() + run.win)  # the grid's last column is flush with the image's side
    checked = [c for c in conf.stats if "paste_rate" in conf.stats[c]]
    cands = sorted(sorted(checked, key=lambda c: -conf.stats[c]["paste_rate"])[:max(1, probe_budget // n_probe)])
    fractions = fractions if cands else ()  # no paste check ran (``paste_check=False``)
    for j, frac in enumerate(fractions):
        if any(str(conf.stats[c].get("confirmed_by", "")).startswith("masking") for c in conf.confirmed):
            break
        win, stride = window_size(side, frac), max(1, window_size(side, stride_fraction))
        if win <= run.win or win > side:
            continue
        big = replace(run, win=win, grid=sliding_boxes((side, side), win, stride))
        probes = _probe_clusters(big, np.random.default_rng([seed, 4246, j]), n_probe, only=cands)  # own streams
        paste_rng, found = np.random.default_rng([seed, 4247, j]), []
        for c in cands:
            mine = np.flatnonzero(probes.cluster == c)
            if len(mine) < 2:
                continue
            pick = mine[np.argsort(-probes.drop[mine], kind="stable")[:n_paste_windows]]
            # a larger window carries enough of a clean object to pull; a trigger is the same pixels in every poison
            cons = window_consistency(crop_windows(run.corpus.images(probes.pos[pick]), probes.box[pick]), stride)
            rec = conf.stats.setdefault(c, {}).setdefault("larger_window", {})
            rec[win] = {"consistency": cons}
            if not cons >= min_consistency:
                continue
            rate, flat, colour = _confirm_by_paste(big, probes, c, probes.cluster == c, paste_rng, n_paste_windows,
                                                   n_paste_test, paste_rate, colour_control, seed)
            rec[win].update(paste_rate=rate, flat_paste_rate=flat)
            if rate >= paste_rate and not colour:
                found.append(c)
                conf.stats[c]["confirmed_by"] = f"masking+paste ({win} px window)"
        if found:
            return big, _Confirmation(conf.med, conf.stats, sorted(set(conf.confirmed) | set(found)), conf.erasers)
    return run, conf


def _mask_corpus(run: _Run, confirmed: list, rng: np.random.Generator, n_null: int, z: float) -> _Masking:
    """Step 3: mask every image against its nearest confirmed cluster (one pass, however many were confirmed:
    at large k a trigger group confirmed as several clusters costs no more); threshold by the MAD rule on a
    null sample of non-members scored the same way."""
    if not confirmed:
        # nothing confirmed: each image's own-cluster Grad-CAM window, masked, flagged by the same rule
        scores, boxes, _ = run.corpus.cam_and_mask(run.all_pos, run.assign, run.win, run.fill)
        scores, target_of = scores.astype(np.float64), run.assign.copy()
        threshold, _, _ = robust_threshold(scores, z)
        return _Masking(scores, boxes, target_of, threshold, "screen_only", {})
    assign = run.assign
    target_of = nearest_confirmed(run.embeddings, run.clusters.centroids, confirmed)
    members = np.flatnonzero(np.isin(assign, confirmed))
    non = np.setdiff1d(run.all_pos, members)
    npos = np.sort(rng.choice(non, size=min(n_null, len(non)), replace=False)) if len(non) else run.all_pos[:1]
    drop, boxes, _ = run.corpus.cam_and_mask(run.all_pos, target_of, run.win, run.fill)
    nd, _ = run.corpus.search(npos, target_of[npos], run.grid, run.fill)
    null_scores = np.maximum(nd, drop[npos])
    threshold, _, _ = robust_threshold(null_scores, z)
    # refine the likeliest poisons (members, and as many again by drop) unless their Grad-CAM window already
    # cleared the threshold: the search can only raise a score, so this saves most of its cost, no flag changes
    extra = np.argsort(-drop, kind="stable")[:len(members)]
    refine = np.union1d(members, extra)
    refine = refine[drop[refine] <= threshold]
    d_r, b_r = run.corpus.search(refine, target_of[refine], run.grid, run.fill)
    better = d_r > drop[refine]
    drop[refine[better]], boxes[refine[better]] = d_r[better], b_r[better]
    refined = {int(c): int((target_of[refine] == c).sum()) for c in confirmed}
    return _Masking(drop.astype(np.float64), boxes, target_of, threshold, "confirmed_cluster", refined)


def _erase_corpus(run: _Run, conf: _Confirmation, rng: np.random.Generator, n_null: int, z: float) -> _Masking:
    """Step 3 by whole-image erasers: each image's drop of its nearest eraser-confirmed cluster's activation under
    that cluster's eraser (its "window" is the whole image); the MAD threshold on non-members, as for windows."""
    confirmed = sorted(conf.erasers)
    target_of = nearest_confirmed(run.embeddings, run.clusters.centroids, confirmed)
    drop = np.zeros(run.n, np.float64)
    for c in confirmed:
        pos = np.flatnonzero(target_of == c)
        drop[pos] = run.corpus.eraser_drops(pos, target_of[pos], [conf.erasers[c]])[conf.erasers[c]]
    non = np.flatnonzero(~np.isin(run.assign, confirmed))
    npos = np.sort(rng.choice(non, size=min(n_null, len(non)), replace=False)) if len(non) else run.all_pos[:1]
    threshold, _, _ = robust_threshold(drop[npos], z)
    side = int(run.grid[:, 0].max() + run.win)  # the grid's last column is flush with the image's side
    boxes = np.tile(np.array([0, 0, side, side], np.int64), (run.n, 1))
    return _Masking(drop, boxes, target_of, threshold, "confirmed_cluster_eraser", {})


def _mask_or_erase(run: _Run, conf: _Confirmation, rng: np.random.Generator, n_null: int, z: float) -> _Masking:
    """Step 3: windows for every confirmed cluster, the finer evidence, unless an eraser passed and erasing
    moves a larger share of its clusters' members above its threshold than masking moves of theirs (the
    trigger is in no single window: blend, SIG). Whichever is kept, ``rng`` ends as that step alone left it."""
    mask = _mask_corpus(run, conf.confirmed, rng, n_null, z)  # nothing confirmed: the screen of every image
    if not conf.erasers:
        return mask
    # shares, not "any member": one SIG member crossed by 0.0005 on one CPU's kernels (P 0.09 against 1.00)
    moved = np.mean(mask.scores[np.isin(run.assign, conf.confirmed)] > mask.threshold)
    state, erased = rng.bit_generator.state, _erase_corpus(run, conf, rng, n_null, z)
    if moved > 0 and moved >= np.mean(erased.scores[np.isin(run.assign, list(conf.erasers))] > erased.threshold):
        rng.bit_generator.state = state
        return mask
    return erased


def _top_candidates(run: _Run, mask: _Masking, confirmed: list, n_top_windows: int, paste: dict) -> tuple:
    """The ``n_top_windows`` confirmed-cluster members with the largest drop above the threshold (and how they
    were chosen); where fewer clear it, completed by the members' own best windows that pass the paste check."""
    # members: a non-member's drop of c* is weaker evidence (CIFAR: 2 of the top 20 of all images were clean, 0 of
    # the top 20 members); fewer above it: 0 on the quickstart, 1 on quickstart_variants' target 6 seed 3 (R 0.625)
    above = np.flatnonzero(mask.scores > mask.threshold)
    in_conf, keep, rates = above[np.isin(run.assign[above], confirmed)], [], {}
    members = np.flatnonzero(np.isin(run.assign, confirmed)) if len(in_conf) < n_top_windows else in_conf[:0]
    top = members[np.argsort(-mask.scores[members], kind="stable")[:n_top_windows]]
    for c in np.unique(run.assign[top]).tolist() if mask.mode == "confirmed_cluster" else []:
        mine = top[run.assign[top] == c]
        others = np.flatnonzero(~np.isin(run.assign, run.corpus.group(c)))
        prng = np.random.default_rng([paste["seed"], 4249, c])  # its own stream: nothing else draws differently
        test_pos = np.sort(prng.choice(others, size=min(paste["n_paste_test"], len(others)), replace=False))
        rates[c] = run.corpus.paste_rate(crop_windows(run.corpus.images(mine), mask.boxes[mine]), test_pos, c, prng)
        keep += mine.tolist() if rates[c] >= paste["paste_rate"] else []
    how = {"top_from": f"members' best windows, pasted ({len(in_conf)} cleared the threshold)"} if keep else {}
    above = np.union1d(in_conf, keep) if keep else in_conf if len(in_conf) else above
    return above[np.argsort(-mask.scores[above], kind="stable")[:n_top_windows]], {**how, "top_paste_rate": rates}


def _train_and_cut(run: _Run, mask: _Masking, confirmed: list, top: np.ndarray, rng: np.random.Generator, *,
                   classifier_images: int, classifier_epochs: int, z: float, seed: int, erasers: dict):
    """Step 4: train the poison classifier on the top windows, score the corpus, cut its logits.

    ``(logits, threshold, cut info)``, or ``None`` when there are no windows or no clean images to train on."""
    clean_pool = np.flatnonzero(~np.isin(run.assign, confirmed) & (mask.scores <= mask.threshold))
    if not (len(top) and len(clean_pool)):
        return None
    clean_pos = np.sort(rng.choice(clean_pool, size=min(classifier_images, len(clean_pool)), replace=False))
    eraser = erasers.get(int(mask.target_of[top[0]])) if mask.mode == "confirmed_cluster_eraser" else None
    if eraser is None:
        patches = crop_windows(run.corpus.images(top), mask.boxes[top])
    else:  # a global trigger: the classifier learns what the eraser took from the top candidates
        patches = list(residuals(run.corpus.images(top), eraser))
    clf = train_poison_classifier(run.corpus, clean_pos, patches, rng=rng, epochs=classifier_epochs, seed=seed,
                                  eraser=eraser)
    scores = classifier_logits(clf, run.corpus, run.all_pos)
    # the valley of the corpus' logits, but never inside the bulk of held-out clean images
    threshold, classifier_info = classifier_cut(scores, np.setdiff1d(clean_pool, clean_pos), z)
    classifier_info["n_train_clean"] = int(len(clean_pos))
    return scores, threshold, classifier_info


def _classifier_step(run: _Run, mask: _Masking, conf: _Confirmation, rng: np.random.Generator, timings: dict, *,
                     classifier: bool, n_top_windows: int, classifier_images: int, classifier_epochs: int, z: float,
                     seed: int, paste: dict):
    """Step 4 where it applies: ``(scores, threshold, top windows, final stage, classifier info)``."""
    confirmed = sorted(set(mask.target_of.tolist()) & set(conf.confirmed)) if conf.confirmed else []
    if not (confirmed and classifier):
        return mask.scores, mask.threshold, np.zeros(0, np.int64), "masking", {}
    t = time.perf_counter()
    top, chosen = _top_candidates(run, mask, confirmed, n_top_windows, paste)
    out = _train_and_cut(run, mask, confirmed, top, rng, classifier_images=classifier_images,
                         classifier_epochs=classifier_epochs, z=z, seed=seed, erasers=conf.erasers)
    timings["classifier_s"] = time.perf_counter() - t
    if out is None:
        return mask.scores, mask.threshold, top, "masking", chosen
    scores, threshold, classifier_info = out
    return scores, threshold, top, "classifier", {**classifier_info, **chosen}


def _result(dataset, run: _Run, conf: _Confirmation, mask: _Masking, scores, threshold, top, final_stage,
            classifier_info, timings, t_start, params) -> DetectionResult:
    """The flags, the run's record and the :class:`DetectionResult`."""
    confirmed, n = conf.confirmed, run.n
    by = [str(conf.stats[c].get("confirmed_by", "")) for c in confirmed]
    larger, shared = any("px window" in b for b in by), any("shared pattern" in b for b in by)
    # No confirmed cluster means no evidence that the encoder tied a trigger to a cluster: the screen's
    # scores still rank the images, but cutting their tail would only remove the corpus' oddest clean
    # images (on two encoders that had not learned their trigger it removed 6.7% and 10% of the corpus
    # at precision 0.02-0.03), so nothing is flagged and the run says why.
    flagged = scores > threshold if confirmed else np.zeros(n, dtype=bool)
    timings["total_s"] = time.perf_counter() - t_start
    glob = (" (a global trigger: its members share one fine pattern, which pulled other images into it)" if shared
            else " (a global trigger: a whole-image eraser's residual pulled images into it)")
    info: dict[str, Any] = {
        "mode": mask.mode,
        "evidence": ("a confirmed trigger cluster" + (glob if mask.mode.endswith("eraser") else "")
                     + (f" (by {run.win} px windows: the trigger is larger than the default)" if larger else ""))
        if confirmed else
        "none: no cluster's windows or eraser residuals pulled other images into it, so nothing is flagged",
        "confirmed_erasers": {int(c): e for c, e in conf.erasers.items()},
        "final_stage": final_stage,
        "confirmed_clusters": confirmed,
        "cluster_stats": conf.stats,
        "cluster_sizes": run.clusters.sizes.tolist(),
        "cluster_median_drop": [float(v) if np.isfinite(v) else None for v in conf.med],
        "n_refined": mask.refined,
        "mask_threshold": float(mask.threshold),
        "classifier": classifier_info,
        "top_windows": [{"index": int(dataset.keys[p]), "box": mask.boxes[p].tolist(),
                         "mask_drop": float(mask.scores[p])} for p in top],
        "window": run.win,
        "n_search_windows": int(len(run.grid)),
        "timings": timings,
        "params": params,
    }
    log.info("poisoncam: %s, confirmed %s, flagged %d of %d in %.1fs", mask.mode, confirmed, int(flagged.sum()), n,
             timings["total_s"])
    return DetectionResult("poisoncam", np.asarray(dataset.keys), scores, flagged, float(threshold),
                           {"box": mask.boxes, "cluster": run.assign.copy(), "target_cluster": mask.target_of,
                            "mask_drop": np.asarray(mask.scores, np.float64)}, info)


@register_detector("poisoncam", stage="ssl")
def poisoncam(
    *,
    backbone: torch.nn.Module,
    dataset,
    embeddings: np.ndarray | None = None,
    clusters: ClusterResult | None = None,
    k: int = 20,
    window_fraction: float = 0.375,
    stride_fraction: float = 0.125,
    fill: str = "context",
    n_probe: int = 32,
    probe_budget: int = 640,
    n_null: int = 256,
    min_cluster_size: int = 2,
    z: float = 3.5,
    confirm_z: float = float("inf"),
    paste_check: bool = True,
    support_z: float = float("-inf"),
    paste_rate: float = 0.5,
    n_paste_windows: int = 8,
    n_paste_test: int = 32,
    twin_clusters: bool = True,
    group_k: int | None = 10,
    colour_control: bool = False,
    erasers: tuple | None = ERASERS,
    min_shared: float | None = 0.5,
    larger_windows: tuple | None = (0.5,),
    min_consistency: float = 0.99,
    classifier: bool = True,
    n_top_windows: int = 20,
    classifier_images: int = 2000,
    classifier_epochs: int = 4,
    batch_size: int = 256,
    image_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    accelerator=None,
) -> DetectionResult:
    """Score every image of ``dataset`` by cluster activation masking (see the module docstring).

    Args:
        backbone: the SSL encoder (a :class:`~sslguard.models.backbones.StagedBackbone` or timm backbone).
        dataset: an indexed dataset (``load_array``/``load_image``, ``keys``); poisons are what we look for.
        embeddings: (N, D) embeddings of ``dataset`` in its order (computed when ``None``).
        clusters: k-means of the embeddings (fitted with ``k`` and ``seed`` when ``None``).
        window_fraction: side of the masked square as a fraction of the image side.
        stride_fraction: step of the exhaustive window search as a fraction of the image side.
        fill: how a window is erased: ``"context"`` (inpainted from its surroundings), ``"blur"``, ``"mean"``
            or ``"grey"`` (see :func:`sslguard.cam.mask_windows`).
        n_probe: members per cluster searched exhaustively to decide whether the cluster is a trigger cluster.
        probe_budget: searches of step 1 in all, shared by the clusters (at least 4 each; :func:`probes_per_cluster`).
        n_null: images outside the confirmed clusters forming the null sample of the threshold.
        min_cluster_size: smaller clusters are never confirmed (a median of one image is no evidence).
        z: robust z of the MAD rule that flags single images (the masking threshold of step 3).
        paste_check, support_z, paste_rate, n_paste_windows, n_paste_test: step 2 (for clusters whose median
            probe drop reaches robust z ``support_z``; default: all). ``paste_rate`` above 1 records every rate
            and confirms nothing (a diagnostic).
        twin_clusters: count a paste that lands in the cluster's twin (mutual nearest centroid) as an arrival.
        group_k: above this many clusters a paste into one of the ``ceil(k / group_k) - 1`` nearest clusters
            counts too (:func:`~sslguard.detectors.corpus.cluster_groups`; ``None``: never).
        colour_control: confirm only when flat mean-colour copies of the windows do not explain their pull
            (``colour_explains``; ``cluster_stats[c]["flat_paste_rate"]``); off by default (why: *Limits*).
        larger_windows, min_consistency: step 2b's window fractions, tried in turn, and consistency bar.
        erasers: whole-image erasers (:mod:`sslguard.erasers`) whose residuals step 2 adds (global triggers).
        min_shared: step 2's shared-pattern bar (:mod:`~sslguard.detectors.global_trigger`; ``None``: off).
        confirm_z: robust z at which the masking drop alone confirms a cluster, without the paste check
            (default: never; ``confirm_z=3.5, paste_check=False`` is this detector before the paste check).
        classifier: end with step 4 (``False``: step 3's drops are the scores); ``n_top_windows``: windows it
            learns as triggers; ``classifier_images``: clean images it trains on; ``classifier_epochs``.
        image_size: resize images to this side (``None``: as stored).
        device: where the encoder runs (the accelerator's device when ``accelerator`` is given).
        accelerator: with several processes each runs this function and the per-image work is split by
            batch; each gets one process's result (:class:`~sslguard.detectors.corpus.Corpus`).
    """
    if paste_rate < 0 or n_paste_windows < 1 or n_paste_test < 1:
        raise ValueError("poisoncam: paste_rate must be >= 0, n_paste_windows and n_paste_test >= 1; got "
                         f"{paste_rate}, {n_paste_windows}, {n_paste_test}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng([seed, 4242])
    embeddings, clusters = prepare_embeddings_and_clusters(backbone, dataset, embeddings, clusters, k=k, seed=seed,
                                                           batch_size=batch_size, image_size=image_size)
    timings["embed_cluster_s"] = time.perf_counter() - t_start
    was_training = backbone.training
    run = _make_run(backbone, dataset, embeddings, clusters, window_fraction=window_fraction,
                    stride_fraction=stride_fraction, fill=fill, batch_size=batch_size, image_size=image_size,
                    device=device, twin_clusters=twin_clusters, group_k=group_k, accelerator=accelerator)
    n_probe_c = probes_per_cluster(clusters.k, n_probe, probe_budget)
    try:
        t = time.perf_counter()
        probes = _probe_clusters(run, rng, n_probe_c, tuple(erasers or ()))
        timings["probe_s"] = time.perf_counter() - t
        t = time.perf_counter()
        paste_rng = np.random.default_rng([seed, 4243])  # its own stream: the later steps draw as before
        paste = dict(paste_rate=paste_rate, n_paste_windows=n_paste_windows, n_paste_test=n_paste_test,
                     colour_control=colour_control, seed=seed)
        conf = _confirm_clusters(run, probes, paste_rng, confirm_z=confirm_z, min_cluster_size=min_cluster_size,
                                 paste_check=paste_check, support_z=support_z, min_shared=min_shared, **paste)
        run, conf = _grow_window(run, conf, n_probe, probe_budget, fractions=tuple(larger_windows or ()),
                                 stride_fraction=stride_fraction, min_consistency=min_consistency, **paste)
        timings["confirm_s"] = time.perf_counter() - t
        t = time.perf_counter()
        mask = _mask_or_erase(run, conf, rng, n_null, z)
        timings["filter_s"] = time.perf_counter() - t
        scores, threshold, top, final_stage, classifier_info = _classifier_step(
            run, mask, conf, rng, timings, classifier=classifier, n_top_windows=n_top_windows,
            classifier_images=classifier_images, classifier_epochs=classifier_epochs, z=z, seed=seed, paste=paste)
    finally:
        backbone.train(was_training)
    params = {"k": clusters.k, "window_fraction": window_fraction, "stride_fraction": stride_fraction, "fill": fill,
              "n_probe": n_probe, "probe_budget": probe_budget, "n_probe_per_cluster": n_probe_c, "group_k": group_k,
              "n_null": n_null, "min_cluster_size": min_cluster_size, "z": z, **paste, "paste_check": paste_check,
              "confirm_z": confirm_z if np.isfinite(confirm_z) else None, "twin_clusters": twin_clusters,
              "support_z": support_z if np.isfinite(support_z) else None, "erasers": list(erasers or ()),
              "min_shared": min_shared, "larger_windows": list(larger_windows or ()),
              "min_consistency": min_consistency,
              "classifier": classifier, "n_top_windows": n_top_windows, "classifier_images": classifier_images,
              "classifier_epochs": classifier_epochs, "batch_size": batch_size, "image_size": image_size}
    return _result(dataset, run, conf, mask, scores, threshold, top, final_stage, classifier_info, timings, t_start,
                   params)
