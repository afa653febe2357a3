"""Heatmap clustering (Schulth et al. 2022): LRP heatmaps via zennit find planted BadNets poisons."""

import sys

import numpy as np
import pytest

from sslguard.testing import planted_badnets_classifier_case
from sslguard.data import load_digits_dataset
from sslguard.detectors import get_detector
from sslguard.detectors.heatmap_clustering import lrp_heatmaps
from sslguard.metrics import detection_metrics
from sslguard.models.classifier import build_classifier

pytest.importorskip("zennit")


@pytest.fixture(scope="module")
def case():
    c = planted_badnets_classifier_case(rate=0.3, rate_of="target")
    assert c.metrics["asr"] >= 0.9, c.metrics
    return c


def test_finds_planted_poisons(case):
    r = get_detector("heatmap_clustering")(case.model, case.train)
    m = detection_metrics(r.scores, r.flagged, case.truth)
    assert m["auroc"] >= 0.95 and m["f1"] >= 0.8, m
    assert r.info["flagged_classes"] == [case.attack.target]
    assert np.array_equal(r.flagged, r.scores > r.threshold)


def test_poison_heatmaps_point_at_the_trigger(case):
    pos = np.flatnonzero(case.train.labels == case.attack.target)
    sub = case.train.subset(pos)
    _, h = lrp_heatmaps(case.model, sub, case.attack.target, heatmap_size=8)
    assert h.shape == (len(pos), 64)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-4)
    # the BadNets patch sits in the bottom-right corner: poisons put more relevance there
    corner = h.reshape(-1, 8, 8)[:, 6:, 6:].sum((1, 2))
    t = case.truth[pos]
    assert corner[t].mean() > corner[~t].mean() + 0.1


def test_resnet_blocks_are_canonized():
    m = build_classifier("cifar_resnet18", 10, width=4, seed=0).eval()
    ds = load_digits_dataset("test").subset(np.arange(6))
    _, h = lrp_heatmaps(m, ds, 3, heatmap_size=4)
    assert h.shape == (6, 16) and np.isfinite(h).all()


def test_missing_zennit_names_the_extra(case, monkeypatch):
    monkeypatch.setitem(sys.modules, "zennit", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install sslguard\[lrp\]"):
        get_detector("heatmap_clustering")(case.model, case.train.subset(np.arange(20)))
