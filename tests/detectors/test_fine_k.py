"""The cluster-based SSL detectors at k far above a corpus' natural groups (k >= 50): the trigger group is cut
into several clusters, and the detectors must still find it, at a cost that does not grow with k's square."""

import numpy as np
import pytest
import torch

from sslguard.cluster import ClusterResult
from sslguard.detectors import get_detector
from sslguard.detectors import patchsearch as ps_mod
from sslguard.detectors.poisoncam import probes_per_cluster
from sslguard.metrics import detection_metrics
from sslguard.testing import embed_and_cluster, planted_patch_encoder_case

FINE_K = 50


@pytest.fixture(scope="module")
def fine():
    c = planted_patch_encoder_case(seed=0)
    emb, clusters = embed_and_cluster(c.backbone, c.dataset, k=FINE_K)
    trig = np.unique(clusters.assignments[c.truth])
    # the fixture's premise: at k=50 the 73 poisons are cut into pure pieces (3 on AMD AVX-512 kernels, 2 on an
    # Intel CPU's SSE4.1 ones: how many is float order, that it is more than one is the premise)
    assert len(trig) >= 2 and all(c.truth[clusters.assignments == t].mean() > 0.95 for t in trig), trig
    return c, emb, clusters, set(trig.tolist())


def test_poisoncam_confirms_the_pieces_of_a_trigger_group_at_fine_k(fine):
    c, emb, clusters, trig = fine
    res = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                    n_null=48, classifier_images=300, classifier_epochs=3, seed=0)
    confirmed = set(res.info["confirmed_clusters"])
    # every confirmed cluster is a trigger piece, and together they hold most poisons
    assert confirmed and confirmed <= trig, (confirmed, trig)
    assert np.isin(clusters.assignments[c.truth], list(confirmed)).mean() >= 0.5
    stats = res.info["cluster_stats"]
    # a trigger piece's paste arrivals count in its neighbours (k=50: 4 nearest clusters join each group)
    assert all(len(stats[t]["paste_into"]) >= 5 for t in confirmed)
    clean = [s["paste_rate"] for k, s in stats.items() if k not in trig and "paste_rate" in s]
    assert clean and max(clean) < 0.3, max(clean)
    m = detection_metrics(res.scores, res.flagged, c.truth)
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9, m
    # fewer probes per cluster at fine k: step 1 stays within its budget
    assert res.info["params"]["n_probe_per_cluster"] == probes_per_cluster(FINE_K, 32, 640) == 12


def test_patchsearch_finds_a_trigger_group_cut_into_pieces_at_fine_k(fine):
    c, emb, clusters, trig = fine
    res = get_detector("patchsearch")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                      test_size=160, round_windows=80, final_samples=32, n_top_windows=8,
                                      classifier_images=300, classifier_epochs=3, seed=0)
    assert res.info["final_cluster"][0] in trig
    assert res.info["top_window_pull_rate"] >= 0.5 and res.info["test_size"] <= 160
    m = detection_metrics(res.scores, res.flagged, c.truth)
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9, m


class _Images:
    """A corpus stub for the search's bookkeeping: flip counts are random, images are blank."""

    def __init__(self, groups):
        self.groups = groups

    def images(self, pos):
        return torch.zeros(len(pos), 3, 8, 8, dtype=torch.uint8)


def _clusters(n, k, rng):
    assign = np.sort(rng.integers(0, k, n))
    assign[:k] = np.arange(k)  # no empty cluster
    return ClusterResult(assign, rng.normal(size=(k, 4)).astype(np.float32), rng.random(n).astype(np.float32), k, 0.0)


@pytest.mark.parametrize("k", [20, 50, 200, 1000])
def test_patchsearch_search_cost_grows_with_k_not_its_square(k, monkeypatch):
    """Flip tests are windows x test images: the test set stays at ``test_size`` and a round scores at most
    ``round_windows`` windows (one per cluster when there are more clusters), so the search costs
    about (k + round_windows x rounds) x test_size forward passes instead of (8 k / prune) x 16 k."""
    rng = np.random.default_rng(0)
    clusters = _clusters(20_000, k, rng)
    corpus = _Images(np.eye(k, dtype=bool))
    test = ps_mod._make_test_set(corpus, clusters, 16, 320, rng, 8, 3)
    # test_size // k images per cluster (at most 16), or one image of 320 random clusters above 320
    assert len(test.pos) == (k * min(16, 320 // k) if k <= 320 else 320) <= 320
    assert len(np.unique(test.pos)) == len(test.pos)
    calls = []

    def fake_flips(corpus, boxes, assign, test, positions):
        calls.append(len(positions))
        return np.random.default_rng(len(calls)).integers(0, 10, len(positions))

    monkeypatch.setattr(ps_mod, "_flip_counts", fake_flips)
    search = ps_mod._iterative_search(corpus, clusters, np.zeros((20_000, 4), np.int64), test, rng,
                                      samples_per_round=8, round_windows=160, prune_fraction=0.25, final_samples=64)
    assert len(search.remaining) == 1
    scored = int((search.poison_score >= 0).sum())
    rounds = search.rounds
    assert scored <= k + 160 * rounds + 64
    if k == 20:  # at the default k the search is the paper's: 8 windows of every cluster per round
        assert calls[:20] == [8] * 20
