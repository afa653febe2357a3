"""PoisonCAM: find SSL poisons by cluster activation masking.

After Qian et al. (2023), "Erasing Self-Supervised Learning Backdoor by Cluster Activation Masking"
(arXiv preprint). The cluster model of PatchSearch (k-means centroids of the encoder's normalised
embeddings, an image scored by cosine similarity to each centroid) is probed by *masking*: erasing
the trigger region of a poisoned image lowers its cluster activation far more than erasing any region
of a clean image, because in a poisoned corpus the encoder has tied the trigger to a cluster. The paper
reports 96% trigger-detection accuracy on poisoned ImageNet-100 where PatchSearch reached 3%.

This implementation (our own code, following the idea) runs in four steps:

1. **Probe every cluster**: ``n_probe`` random members of each cluster are masked window by window
   (an exhaustive sliding-window search). A window is erased by inpainting it from its surroundings
   (``fill="context"``, :func:`sslguard.cam.context_fill`), so what was in it leaves no trace and no
   sharp square is pasted in its place. Each probe keeps the window whose erasure lowers its
   own-cluster activation most.
2. **Confirm** a cluster by the *paste check*: the windows of its ``n_paste_windows`` highest-drop
   probes, pasted at random places onto ``n_paste_test`` non-members, must move at least ``paste_rate``
   of them into the cluster. What was erased is a trigger when it also *brings* images in; a part of a
   clean object (a wing, a stroke of a digit) rarely does. Every cluster of at least
   ``min_cluster_size`` members is checked (``support_z=-inf``): the size of the masking drop alone
   does not single out the trigger cluster (see *Why the paste check decides* below).
3. **Mask the corpus** against each confirmed cluster c*: every image gets Grad-CAM *of c** (so
   poisons outside the cluster are scored too) and the drop of c*'s activation when that window is
   masked; the likeliest poisons (c*'s members and as many again by drop) whose Grad-CAM window did
   not already clear the threshold are refined with the exhaustive search. Threshold: the same MAD
   rule on a null sample of ``n_null`` non-members scored the same way (data-driven, no hand-set cut).
   When no cluster is confirmed there is no evidence that the encoder tied a trigger to a cluster:
   each image's own-cluster Grad-CAM drop is returned as a ranking, nothing is flagged
   (``info["evidence"]`` says so), and step 4 does not run.
4. **Poison classifier** (the paper's last step, which PatchSearch shares; :mod:`sslguard.poison_classifier`):
   the masked windows of the ``n_top_windows`` members of the confirmed clusters with the largest drop
   above the threshold are taken as the trigger, a small CNN learns to tell clean images from clean
   images carrying one of them, and it scores the whole corpus (the scores are its logits; the drops
   stay in ``evidence["mask_drop"]``).
   Why: the encoder reacts to the trigger in some poisons only weakly, so their own masking drop stays
   under the threshold, but the classifier still sees the trigger in their pixels. Flagged: logit above
   the valley of the corpus' logits (Otsu), and never below the MAD bound of held-out clean images
   (which keeps a unimodal, poison-free logit distribution from being cut in half).

Why the paste check decides (the root cause of this detector's failure on the README's quickstart):
the masking drop measures how *fragile* a cluster is, not whether it is a trigger cluster. On small
images a window large enough to cover the trigger also erases a decisive part of a clean object: on
the 16 px quickstart digits (6 px window) 88-100% of the probes of 9 of the 10 clean clusters left
their cluster under their best window, against 44% for the trigger cluster, whose median drop was
the lowest of the ten (robust z -1.87), so a masking gate never let it reach the paste check. The
trigger cluster also sits next to its clean twin (triggered zeros beside clean zeros), so a small
activation drop already changes the cluster. And the former eraser, a blurred copy of the image,
averages blocks of an eighth of the image, which left the 6 px trigger's own colour in the window.
The paste check separated the clusters there as on every case measured (trigger 0.86-0.90, clean at
most 0.20): it is now the confirmation, for every cluster.

Defaults, as measured on the planted digits case (:func:`sslguard.testing.planted_patch_encoder_case`,
a 10 px trigger on 32 px images, k=10, n_probe=12, n_null=64): ``window_fraction=0.375`` (12 px) with ``stride_fraction=0.125``
(4 px) gave F1 0.99 / AUROC 1.00; a coarser 8 px stride left some triggers half-covered (F1 0.86 /
AUROC 0.99); a 16 px window erased half of every clean digit too, so no cluster stood out (nothing
confirmed, F1 0.49 / AUROC 0.69). A window of side w on a stride s fully covers any trigger of side
<= w - s + 1, so the default fully erases triggers up to 9 px of 32 and at least 9x9 of a 12 px one.
``k=20`` (used when no clusters are passed; the pipeline's ``cluster.k``, see its comment): above
the natural groups of a 10-class corpus. At ``k=10``, with an encoder that had learned the 12x12 CIFAR trigger, one of
the k=10 clusters had 489 members, 482 of them poisons (an earlier measurement in this project).
``z=3.5``: the usual MAD outlier cut (Iglewicz & Hoaglin) for single images. Confirmation by the
masking z alone (``confirm_z``, 3.5 before the paste check) was fragile, and no fixed value separated
every case measured: the trigger cluster of the held-out CPU BYOL encoder scored robust z 2.87, 3.59
and 3.42 at three k-means seeds (3.5 confirmed it once), the planted case's 2.33 to 6.23, while a clean
planted cluster reached 4.75 (n_probe=12, seed 2). The paste rate separates them with a wide margin:
trigger clusters 0.70 to 0.99 (planted x3, the two CPU BYOL encoders x3 each), clean clusters at most
0.20 (``support_z`` lowered to -inf so every cluster was checked). Hence ``paste_rate=0.5`` (a majority
of the pasted images join, the bar ``learned_verdict`` uses for triggered test images). ``support_z``
(2.0 until the quickstart showed the masking gate shutting out the trigger cluster) is now -inf. These values were chosen on those encoders; the two GPU-trained ResNet-18
encoders (``benchmarks/encoders``) were held out to test them.
``n_probe=32``/``n_null=256``: the medians and MADs they give are stable to a few per cent, and the
exhaustive search on them costs 36 masked forward passes per probe (about 20k for k=10).

Measured on a BYOL encoder that learned a 12x12 CIFAR-10 trigger (``benchmarks/detect.md``, three
k-means/detector seeds): the trigger cluster is confirmed every time, but masking alone flags only about
half of the poisons (F1 0.59 to 0.65, AUROC 0.97 to 0.98); with step 4, F1 0.999 and AUROC 1.000 at
each seed, and top-k precision at k = poison count 1.000 (PatchSearch: 1.000, 0.996, 1.000). Taking
the windows from all images instead of the confirmed members let 2 clean non-members into the top 20
and gave 0.986 to 0.996 (this choice was made on that encoder). On a second BYOL encoder (seed 1,
which learned the trigger together with "any patch"), confirmation by masking alone (z >= 3.5) found
the trigger cluster at 1 of 3 seeds (F1 0.29 at the others); with the paste check at all three (F1
0.997, 0.999, 0.999, top-k 1.000, 0.998, 0.998, the same as PatchSearch's). On the planted case
(seeds 0-2) it confirms the trigger cluster and nothing else at each seed, where masking alone missed
it once and confirmed a clean cluster once. Held out, on the BYOL ResNet-18 trained on a GPU with the
12x12 trigger (``benchmarks/encoders``; 2,000 images, 100 poisons): confirmed at both seeds run (paste
rate 0.996, 0.992), F1 1.000 and top-k 1.000, as PatchSearch (1.000), in 700 s against PatchSearch's
1,900 s on this CPU. On its sibling with the 8x8 trigger, which the encoder learned only in part,
nothing is confirmed (AUROC 0.40) and PatchSearch flags nothing either (AUROC 0.57). In seven trial
runs of step 4 on the first encoder (seeds; 20 or 50 windows; 4 or 8 epochs; ad hoc, not in the
benchmark file) the classifier's own
boundary (logit 0) gave F1 0.70 to 0.99 and the Otsu cut 0.95 to 1.00, hence the cut.
``n_top_windows=20``, ``classifier_images=2000``, ``classifier_epochs=4`` are PatchSearch's
values, so the two detectors differ only in how they find the trigger windows.

Limits: the detector finds what the encoder learned. If the encoder did not tie the trigger to a
cluster (a small trigger, short training, a weak encoder), masking it changes nothing and the scores
are at chance (a 4-layer ConvNet trained 10 min on 10k CIFAR images did not learn an 8x8 trigger).
Masking a square window suits patch triggers; global triggers (blend, CTRL's frequency trigger, WaNet)
cannot be erased by one window, so their poisons look clean to it. A window smaller than the trigger
erases it only in part: ``window_fraction`` should be at least the trigger's share of the image side.
The paste check pastes windows at random places: a trigger that only acts at one position, or only
together with its surroundings, may fail it (HTBA's patch is placed at random, so it passes). Step 4
inherits the limits of :mod:`sslguard.poison_classifier`: if a wrong cluster is confirmed, it learns an
object part and flags the images that show it. The trigger must be a distinct cluster at the chosen
``k``: when k-means merges the poisons with clean images of their class (k at or below the number of
natural groups), the cluster's windows are half object parts and its paste rate falls toward 0.5. Every
cluster gets the paste check, so the check costs ``k * n_paste_windows * n_paste_test`` forward passes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from sslguard.cam import ClusterModel, best_window, grad_cam, load_uint8, masked_drop, search_windows, sliding_boxes, \
    window_size
from sslguard.cluster import ClusterResult, kmeans
from sslguard.detectors.base import DetectionResult, classifier_cut, register_detector, robust_threshold
from sslguard.poison_classifier import classifier_logits, crop_windows, paste_many, paste_places, \
    train_poison_classifier

log = logging.getLogger(__name__)


def prepare_embeddings_and_clusters(backbone, dataset, embeddings, clusters, *, k, seed, batch_size, image_size,
                                    ) -> tuple[np.ndarray, ClusterResult]:
    """Embeddings (computed when not given) and k-means clusters (fitted when not given), checked for size."""
    if embeddings is None:
        from sslguard.embed import embed_dataset

        _, embeddings = embed_dataset(backbone, dataset, batch_size=batch_size, image_size=image_size,
                                      normalize=True, progress=False)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) != len(dataset):
        raise ValueError(f"{len(embeddings)} embeddings for a dataset of {len(dataset)} images")
    if clusters is None:
        clusters = kmeans(embeddings, k, spherical=True, seed=seed)
    if clusters.n != len(dataset):
        raise ValueError(f"clusters were fitted on {clusters.n} rows, the dataset has {len(dataset)} images")
    return embeddings, clusters


class _Corpus:
    """Batched image access + cluster model, shared by the steps below."""

    def __init__(self, backbone, dataset, centroids, batch_size, image_size, device):
        self.dataset, self.batch_size, self.image_size, self.device = dataset, batch_size, image_size, device
        self.model = ClusterModel(backbone, centroids).to(device).eval()

    def images(self, pos: np.ndarray) -> torch.Tensor:
        return load_uint8(self.dataset, pos, self.image_size).to(self.device)

    def cam_and_mask(self, positions: np.ndarray, targets: np.ndarray, window: int, fill: str):
        """Grad-CAM window of cluster ``targets`` and the activation drop when it is masked, for ``positions``."""
        drop = np.zeros(len(positions), np.float32)
        base = np.zeros(len(positions), np.float32)
        boxes = np.zeros((len(positions), 4), np.int64)
        for s in range(0, len(positions), self.batch_size):
            pos = positions[s:s + self.batch_size]
            t = torch.as_tensor(targets[s:s + len(pos)], device=self.device)
            imgs = self.images(pos)
            cam, scores, _ = grad_cam(self.model, imgs, t)
            b, _ = best_window(cam, window)
            act = scores.gather(1, t[:, None])[:, 0]
            d, _ = masked_drop(self.model, imgs, b.cpu().numpy(), t, act, fill)
            drop[s:s + len(pos)], base[s:s + len(pos)] = d.cpu().numpy(), act.cpu().numpy()
            boxes[s:s + len(pos)] = b.cpu().numpy()
        return drop, boxes, base

    @torch.no_grad()
    def paste_rate(self, patches: list[torch.Tensor], test_pos: np.ndarray, cluster: int,
                   rng: np.random.Generator) -> float:
        """Share of (patch, test image) pairs whose pasted copy the cluster model assigns to ``cluster``."""

        imgs = self.images(test_pos)
        hits, total = 0, 0
        for p in patches:
            out = paste_many(imgs, [p] * len(imgs), paste_places(rng, [p] * len(imgs), imgs.shape[-1]))
            for s in range(0, len(out), self.batch_size):
                hits += int((self.model(out[s:s + self.batch_size]).argmax(1) == cluster).sum())
            total += len(out)
        return hits / max(total, 1)

    def search(self, positions: np.ndarray, targets: np.ndarray, grid: np.ndarray, fill: str):
        """Exhaustive sliding-window masking: best drop and box per image."""
        drop = np.zeros(len(positions), np.float32)
        boxes = np.zeros((len(positions), 4), np.int64)
        per = max(1, self.batch_size // len(grid))  # images per chunk so one chunk is ~batch_size masked copies
        for s in range(0, len(positions), per):
            pos = positions[s:s + per]
            t = torch.as_tensor(targets[s:s + len(pos)], device=self.device)
            d, b, _ = search_windows(self.model, self.images(pos), t, grid, fill, self.batch_size)
            drop[s:s + len(pos)], boxes[s:s + len(pos)] = d.cpu().numpy(), b.cpu().numpy()
        return drop, boxes


@register_detector("poisoncam")
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
    n_null: int = 256,
    min_cluster_size: int = 2,
    z: float = 3.5,
    confirm_z: float = float("inf"),
    paste_check: bool = True,
    support_z: float = float("-inf"),
    paste_rate: float = 0.5,
    n_paste_windows: int = 8,
    n_paste_test: int = 32,
    classifier: bool = True,
    n_top_windows: int = 20,
    classifier_images: int = 2000,
    classifier_epochs: int = 4,
    batch_size: int = 256,
    image_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
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
        n_null: images outside the confirmed clusters forming the null sample of the threshold.
        min_cluster_size: smaller clusters are never confirmed (a median of one image is no evidence).
        z: robust z of the MAD rule that flags single images (the masking threshold of step 3).
        paste_check: confirm a cluster (whose *median* probe drop reaches robust z ``support_z`` against the
            other clusters' probes; default: every cluster) when pasting its probes' masked windows onto ``n_paste_test``
            non-members moves at least ``paste_rate`` of them into it (the ``n_paste_windows`` probes
            with the largest drops; step 2).
        support_z, paste_rate, n_paste_windows, n_paste_test: see ``paste_check``. ``paste_rate`` above 1
            records every checked cluster's rate without confirming any (with ``support_z=-inf``: a diagnostic).
        confirm_z: robust z at which the masking drop alone confirms a cluster, without the paste check
            (default: never; ``confirm_z=3.5, paste_check=False`` is this detector before the paste check).
        classifier: end with the poison classifier (step 4) when a cluster was confirmed; ``False`` returns
            the masking drops of step 3 as the scores.
        n_top_windows: the masked windows of this many top-scored candidates are the classifier's triggers.
        classifier_images: clean images (outside the confirmed clusters, under the threshold) it trains on.
        classifier_epochs: passes over them.
        image_size: resize images to this side (``None``: as stored).
    """
    if paste_rate < 0:
        raise ValueError(f"poisoncam: paste_rate must be >= 0, got {paste_rate}")
    if n_paste_windows < 1 or n_paste_test < 1:
        raise ValueError(f"poisoncam: n_paste_windows and n_paste_test must be >= 1, got {n_paste_windows}, "
                         f"{n_paste_test}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng([seed, 4242])
    embeddings, clusters = prepare_embeddings_and_clusters(backbone, dataset, embeddings, clusters, k=k, seed=seed,
                                                           batch_size=batch_size, image_size=image_size)
    timings["embed_cluster_s"] = time.perf_counter() - t_start
    was_training = backbone.training
    corpus = _Corpus(backbone, dataset, clusters.centroids, batch_size, image_size, device)
    n = len(dataset)
    assign = clusters.assignments
    side = int(corpus.images(np.arange(min(1, n))).shape[-1])
    win = window_size(side, window_fraction)
    grid = sliding_boxes((side, side), win, max(1, window_size(side, stride_fraction)))
    all_pos = np.arange(n)
    try:
        # 1. probe every cluster: a sample of members, each under its best mask (exhaustive search).
        t = time.perf_counter()
        sizes = clusters.sizes
        probe_pos, probe_cluster = [], []
        for c in range(clusters.k):
            mem = clusters.members(c)
            if len(mem):
                pick = np.sort(rng.choice(mem, size=min(n_probe, len(mem)), replace=False))
                probe_pos.append(pick)
                probe_cluster.append(np.full(len(pick), c))
        probe_pos, probe_cluster = np.concatenate(probe_pos), np.concatenate(probe_cluster)
        probe_drop, probe_box = corpus.search(probe_pos, probe_cluster, grid, fill)
        timings["probe_s"] = time.perf_counter() - t

        # 2. confirm a cluster when its typical member stands out among the other clusters' probes and its
        #    windows also pull other images into it (masking alone suffices only above confirm_z).
        t = time.perf_counter()
        paste_rng = np.random.default_rng([seed, 4243])  # its own stream: the later steps draw as before
        med = np.full(clusters.k, -np.inf)
        cand_stats, confirmed = {}, []
        for c in range(clusters.k):
            mine = probe_cluster == c
            if mine.sum() < 2 or (~mine).sum() < 2:
                continue
            med[c] = float(np.median(probe_drop[mine]))
            thr_c, null_med, null_scale = robust_threshold(probe_drop[~mine], confirm_z)
            rz = (med[c] - null_med) / null_scale
            cand_stats[c] = {"size": int(sizes[c]), "median_drop": med[c], "robust_z": rz,
                             "threshold": thr_c if np.isfinite(thr_c) else None}
            if sizes[c] < min_cluster_size:
                continue
            if med[c] > thr_c:
                confirmed.append(c)
                cand_stats[c]["confirmed_by"] = "masking"
            elif paste_check and rz >= support_z:
                # the other half of the causal evidence: a trigger cluster's windows also *bring* other
                # images into it, while a clean cluster's parts (what its members' masks erased) rarely do
                mine_pos = np.flatnonzero(mine)
                pick = mine_pos[np.argsort(-probe_drop[mine_pos], kind="stable")[:n_paste_windows]]
                patches = crop_windows(corpus.images(probe_pos[pick]), probe_box[pick])
                others = np.flatnonzero(assign != c)
                test_pos = np.sort(paste_rng.choice(others, size=min(n_paste_test, len(others)), replace=False))
                rate = corpus.paste_rate(patches, test_pos, c, paste_rng)
                cand_stats[c]["paste_rate"] = rate
                if rate >= paste_rate:
                    confirmed.append(c)
                    cand_stats[c]["confirmed_by"] = "masking+paste"
        timings["confirm_s"] = time.perf_counter() - t

        # 3. filter the corpus against each confirmed cluster.
        t = time.perf_counter()
        if confirmed:
            scores = np.full(n, -np.inf)
            boxes = np.zeros((n, 4), np.int64)
            target_of = np.full(n, -1, np.int64)
            # null sample for the threshold: non-members, scored exactly like the candidates below
            non = np.flatnonzero(~np.isin(assign, confirmed))
            npos = np.sort(rng.choice(non, size=min(n_null, len(non)), replace=False)) if len(non) else all_pos[:1]
            null_scores = np.full(len(npos), -np.inf)
            refined_counts: dict[int, int] = {}
            for c in confirmed:
                tc = np.full(n, c, np.int64)
                drop_c, box_c, _ = corpus.cam_and_mask(all_pos, tc, win, fill)
                nd, _ = corpus.search(npos, tc[npos], grid, fill)
                null_c = np.maximum(nd, drop_c[npos])
                thr_c, _, _ = robust_threshold(null_c, z)
                # refine the likeliest poisons (members, and as many again by drop) unless their Grad-CAM
                # window already cleared the threshold: the search can only raise a score, so this saves
                # most of its cost when Grad-CAM finds the trigger, without changing any flag.
                members = clusters.members(c)
                extra = np.argsort(-drop_c, kind="stable")[:len(members)]
                refine = np.union1d(members, extra)
                refine = refine[drop_c[refine] <= thr_c]
                d_r, b_r = corpus.search(refine, tc[refine], grid, fill)
                better = d_r > drop_c[refine]
                drop_c[refine[better]], box_c[refine[better]] = d_r[better], b_r[better]
                upd = drop_c > scores
                scores[upd], boxes[upd], target_of[upd] = drop_c[upd], box_c[upd], c
                null_scores = np.maximum(null_scores, null_c)
                refined_counts[c] = int(len(refine))
            threshold, _, _ = robust_threshold(null_scores, z)
            mode = "confirmed_cluster"
        else:
            # nothing confirmed: each image's own-cluster Grad-CAM window, masked, flagged by the same rule
            scores, boxes, _ = corpus.cam_and_mask(all_pos, assign, win, fill)
            scores, target_of = scores.astype(np.float64), assign.copy()
            threshold, _, _ = robust_threshold(scores, z)
            mode = "screen_only"
            refined_counts = {}
        timings["filter_s"] = time.perf_counter() - t

        # 4. poison classifier: the masked windows of the top candidates are the trigger; it finds the
        #    poisons whose own masking drop stayed under the threshold (the encoder reacts to some weakly).
        mask_scores, mask_threshold, top = scores, float(threshold), np.zeros(0, np.int64)
        final_stage, classifier_info = "masking", {}
        if confirmed and classifier:
            t = time.perf_counter()
            # candidates from the confirmed clusters' members, whose leaving the cluster under a mask is what
            # confirmed it; a non-member's drop of c* is weaker evidence (on the CIFAR encoder 2 of the top 20
            # over all images were clean non-members, 0 of the top 20 members)
            above = np.flatnonzero(scores > threshold)
            in_conf = above[np.isin(assign[above], confirmed)]
            above = in_conf if len(in_conf) else above
            top = above[np.argsort(-scores[above], kind="stable")[:n_top_windows]]
            clean_pool = np.flatnonzero(~np.isin(assign, confirmed) & (scores <= threshold))
            if len(top) and len(clean_pool):
                clean_pos = np.sort(rng.choice(clean_pool, size=min(classifier_images, len(clean_pool)),
                                               replace=False))
                patches = crop_windows(corpus.images(top), boxes[top])
                clf = train_poison_classifier(corpus, clean_pos, patches, rng=rng, epochs=classifier_epochs,
                                              seed=seed)
                scores = classifier_logits(clf, corpus, all_pos)
                # the valley of the corpus' logits, but never inside the bulk of held-out clean images
                threshold, classifier_info = classifier_cut(scores, np.setdiff1d(clean_pool, clean_pos), z)
                classifier_info["n_train_clean"] = int(len(clean_pos))
                final_stage = "classifier"
            timings["classifier_s"] = time.perf_counter() - t
    finally:
        backbone.train(was_training)
    # No confirmed cluster means no evidence that the encoder tied a trigger to a cluster: the screen's
    # scores still rank the images, but cutting their tail would only remove the corpus' oddest clean
    # images (on two encoders that had not learned their trigger it removed 6.7% and 10% of the corpus
    # at precision 0.02-0.03), so nothing is flagged and the run says why.
    flagged = scores > threshold if confirmed else np.zeros(n, dtype=bool)
    timings["total_s"] = time.perf_counter() - t_start
    info: dict[str, Any] = {
        "mode": mode,
        "evidence": "a confirmed trigger cluster" if confirmed else
        "none: no cluster's windows pulled other images into it, so nothing is flagged",
        "final_stage": final_stage,
        "confirmed_clusters": confirmed,
        "cluster_stats": cand_stats,
        "cluster_sizes": sizes.tolist(),
        "cluster_median_drop": [float(v) if np.isfinite(v) else None for v in med],
        "n_refined": refined_counts,
        "mask_threshold": mask_threshold,
        "classifier": classifier_info,
        "top_windows": [{"index": int(dataset.keys[p]), "box": boxes[p].tolist(), "mask_drop": float(mask_scores[p])}
                        for p in top],
        "window": win,
        "n_search_windows": int(len(grid)),
        "timings": timings,
        "params": {"k": clusters.k, "window_fraction": window_fraction, "stride_fraction": stride_fraction,
                   "fill": fill, "n_probe": n_probe, "n_null": n_null, "min_cluster_size": min_cluster_size, "z": z,
                   "confirm_z": confirm_z if np.isfinite(confirm_z) else None, "paste_check": paste_check,
                   "support_z": support_z if np.isfinite(support_z) else None,
                   "paste_rate": paste_rate, "n_paste_windows": n_paste_windows, "n_paste_test": n_paste_test,
                   "classifier": classifier, "n_top_windows": n_top_windows, "classifier_images": classifier_images,
                   "classifier_epochs": classifier_epochs,
                   "seed": seed, "batch_size": batch_size, "image_size": image_size},
    }
    log.info("poisoncam: %s, confirmed %s, flagged %d of %d in %.1fs", mode, confirmed, int(flagged.sum()), n,
             timings["total_s"])
    return DetectionResult("poisoncam", np.asarray(dataset.keys), scores, flagged, float(threshold),
                           {"box": boxes, "cluster": assign.copy(), "target_cluster": target_of,
                            "mask_drop": np.asarray(mask_scores, np.float64)}, info)
