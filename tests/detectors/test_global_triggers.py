"""Global triggers (issue 17 item 3): no window erases a blend or SIG trigger, so PoisonCAM confirms its cluster
by what a whole-image eraser takes away (sslguard.erasers), added to other images, and flags the poisons. SIG's
stripes also pull images in when a window of them is pasted, but masking one window moves (almost) no poison: the
detector then scores the corpus with the eraser."""

import numpy as np
import pytest

from sslguard.detectors import get_detector
from sslguard.metrics import detection_metrics
from sslguard.testing import PLANTED_ENCODER_K, embed_and_cluster, planted_global_encoder_case


@pytest.fixture(scope="module", params=["blend", "sig"])
def global_case(request):
    """Digits with a blended noise or a SIG sinusoid on half of class 3, and an encoder that learned it."""
    c = planted_global_encoder_case(request.param, seed=0)
    emb, clusters = embed_and_cluster(c.backbone, c.dataset, k=PLANTED_ENCODER_K)
    pc = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                   seed=0)
    return request.param, c, clusters, pc


def test_the_eraser_residual_confirms_the_trigger_cluster_and_no_clean_one(global_case):
    name, c, clusters, pc = global_case
    stats = pc.info["cluster_stats"]
    trig = {int(q) for q in np.unique(clusters.assignments[c.truth])}
    assert trig, "the planted encoder should gather the poisons"
    confirmed = set(pc.info["confirmed_clusters"])
    assert confirmed and confirmed <= trig, (name, confirmed, trig)
    for q in confirmed:
        assert pc.info["confirmed_erasers"][q] == "lowpass", stats[q]
        rate, control = stats[q]["residual_rate"]["lowpass"], stats[q]["residual_control_rate"]["lowpass"]
        assert rate >= 0.5 and control <= rate / 2, stats[q]  # random images' residuals pull far fewer
        assert stats[q]["residual_shared_rate"]["lowpass"] >= rate / 2, stats[q]  # one pattern: its mean pulls too
        if name == "blend":  # no 12 px window of a blended noise pulls images in; a window of SIG's stripes may,
            # and so may a 16 px one of the noise (fixed in place, a copy in every poison: step 2b), on top of the eraser
            assert stats[q]["paste_rate"] < 0.5, stats[q]
            assert stats[q]["confirmed_by"] in ("eraser lowpass+residual", "masking+paste (16 px window)"), stats[q]
    clean = [q for q in stats if q not in trig]
    assert max(max(stats[q]["residual_rate"].values()) for q in clean) < 0.2


def test_the_global_poisons_are_flagged(global_case):
    name, c, _, pc = global_case
    m = detection_metrics(pc.scores, pc.flagged, c.truth)
    if name == "sig":  # masking a window of the stripes moves (almost) no poison: the eraser scores the corpus
        assert pc.info["mode"] == "confirmed_cluster_eraser"
    assert m["recall"] >= 0.9 and m["precision"] >= 0.9, (name, m)
    assert pc.info["evidence"].startswith("a confirmed trigger cluster")
