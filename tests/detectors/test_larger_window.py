"""A patch trigger larger than PoisonCAM's window (issue 17): the default 12 px window (of 32) erases and pastes a
24 px trigger only in part, so no cluster passes by its windows (measured: 0.35 of pasted images pulled).
Step 2b tries the next larger window on the clusters whose windows pulled most; there the trigger cluster's
windows are copies of one pattern and pull images in, and the poisons are flagged at that window."""

import numpy as np
import pytest

from sslguard.detectors import get_detector
from sslguard.metrics import detection_metrics
from sslguard.testing import PLANTED_ENCODER_K, embed_and_cluster, planted_patch_encoder_case


@pytest.fixture(scope="module")
def big_trigger():
    """Digits with a 24 px HTBA patch on half of class 3, an encoder that learned it, PoisonCAM with and
    without the larger window."""
    c = planted_patch_encoder_case(trigger_size=24, seed=0)
    emb, clusters = embed_and_cluster(c.backbone, c.dataset, k=PLANTED_ENCODER_K)

    def run(**kw):
        return get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                         seed=0, **kw)

    return c, clusters, run(), run(larger_windows=())


def _window_confirmed(res) -> list:
    return [q for q in res.info["confirmed_clusters"]
            if str(res.info["cluster_stats"][q].get("confirmed_by", "")).startswith("masking")]


def test_the_default_window_alone_confirms_no_cluster_by_its_windows(big_trigger):
    _, _, _, small = big_trigger
    assert small.info["window"] == 12 and not _window_confirmed(small)


def test_the_larger_window_confirms_the_trigger_cluster_and_flags_the_poisons(big_trigger):
    c, clusters, pc, _ = big_trigger
    trig = {int(q) for q in np.unique(clusters.assignments[c.truth])}
    confirmed = set(_window_confirmed(pc))
    assert confirmed and confirmed <= trig, (confirmed, trig)
    for q in confirmed:
        rec = pc.info["cluster_stats"][q]["larger_window"][16]
        assert rec["consistency"] >= 0.9 and rec["paste_rate"] >= 0.5, rec  # measured: 1.00 and 0.93
    assert pc.info["window"] == 16
    m = detection_metrics(pc.scores, pc.flagged, c.truth)
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9, m
