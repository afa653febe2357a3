import numpy as np
import pytest

from sslguard.metrics import detection_metrics


def test_perfect_and_inverted_scores():
    truth = np.array([0, 0, 1, 1, 0, 1], bool)
    m = detection_metrics(truth.astype(float), truth, truth, ks=(2,))
    assert m["precision"] == m["recall"] == m["f1"] == m["auroc"] == 1.0
    assert m["top2_precision"] == 1.0 and m["toptrue_precision"] == 1.0
    inv = detection_metrics(-truth.astype(float), ~truth, truth, ks=(2,))
    assert inv["auroc"] == 0.0 and inv["precision"] == 0.0 and inv["fpr"] == 1.0


def test_topk_counts_only_the_top():
    truth = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    scores = np.arange(10, 0, -1, dtype=float)  # index 0 highest
    m = detection_metrics(scores, np.zeros(10, bool), truth, ks=(1, 5))
    assert m["top1_precision"] == 1.0
    assert m["top5_precision"] == pytest.approx(0.4)
    assert m["toptrue_precision"] == pytest.approx(0.5)
    assert m["precision"] == 0.0 and m["n_flagged"] == 0


def test_single_class_truth_gives_nan_auroc_and_length_check():
    m = detection_metrics(np.ones(4), np.zeros(4, bool), np.zeros(4, bool))
    assert np.isnan(m["auroc"])
    with pytest.raises(ValueError):
        detection_metrics(np.ones(3), np.zeros(4, bool), np.zeros(4, bool))


def test_ranking_metrics_at_every_depth():
    """AUPRC and TPR at 1% FPR read the ranking where it matters for a small poison share; the default
    top-k set covers 5 to 500 and the poison count."""
    rng = np.random.default_rng(0)
    truth = np.zeros(1000, bool)
    truth[:20] = True
    scores = rng.normal(size=1000)
    scores[:10] += 10.0  # half the poisons rank first, the other half among the clean images
    m = detection_metrics(scores, scores > 5, truth)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.5, abs=0.05)
    assert 0.5 <= m["auprc"] < 0.6 and m["auroc"] < 0.8
    assert m["top5_precision"] == m["top10_precision"] == 1.0 and m["top20_precision"] < 1.0
    assert {f"top{k}_precision" for k in (5, 10, 20, 50, 100, 500)} <= set(m)
    assert m["precision"] == 1.0 and m["recall"] == 0.5
