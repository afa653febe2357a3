import numpy as np
import pytest

from sslguard.bench.detect import planted_digits_case
from sslguard.cluster import kmeans
from sslguard.detectors import get_detector
from sslguard.embed import embed_dataset
from sslguard.metrics import detection_metrics


@pytest.fixture(scope="module")
def case():
    c = planted_digits_case(seed=0)
    _, emb = embed_dataset(c.backbone, c.dataset, normalize=True, progress=False)
    return c, emb, kmeans(emb, 10, seed=0)


def test_poisoncam_ranks_planted_poisons_first(case):
    c, emb, clusters = case
    res = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                    n_probe=8, n_null=48, seed=0)
    m = detection_metrics(res.scores, res.flagged, c.truth)
    assert res.info["mode"] == "confirmed_cluster"
    assert m["auroc"] > 0.95, m
    assert m["toptrue_precision"] > 0.9, m
    assert m["f1"] > 0.8, m
    # evidence is per index: the masked box of a flagged poison overlaps its true trigger
    assert res.evidence["box"].shape == (len(c.dataset), 4) and res.evidence["cluster"].shape == (len(c.dataset),)
    recs = c.manifest.records
    hits = []
    for p in np.flatnonzero(res.flagged & c.truth):
        x, y, w, h = res.evidence["box"][p]
        tx, ty, tw, th = recs[int(c.dataset.keys[p])].location
        hits.append(max(0, min(x + w, tx + tw) - max(x, tx)) * max(0, min(y + h, ty + th) - max(y, ty)) > 0)
    assert np.mean(hits) > 0.9
    # the threshold came from the data (the null sample), and the run says what it did
    assert np.isfinite(res.threshold) and res.info["confirmed_clusters"]
    assert set(res.info["timings"]) >= {"probe_s", "filter_s", "total_s"}


def test_poisoncam_is_deterministic_for_a_seed(case):
    c, emb, clusters = case
    kw = dict(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters, n_probe=4, n_null=16,
              stride_fraction=0.25, seed=1)
    a, b = get_detector("poisoncam")(**kw), get_detector("poisoncam")(**kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.flagged, b.flagged)


def test_poisoncam_rejects_mismatched_inputs(case):
    c, emb, clusters = case
    with pytest.raises(ValueError, match="embeddings for a dataset"):
        get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb[:10], clusters=clusters)
