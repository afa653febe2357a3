"""Spectral signatures (Tran et al. 2018): outlier scores along the top singular direction per class."""

import numpy as np
import pytest

from sslguard.bench.classifier import planted_digits_case
from sslguard.detectors import get_detector
from sslguard.detectors.spectral import spectral_scores
from sslguard.metrics import detection_metrics


def test_removes_one_and_a_half_eps_per_class_and_ranks_the_planted_direction_first():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16))
    y = np.repeat(np.arange(4), 100)
    truth = np.zeros(400, bool)
    truth[:10] = True  # 10% of class 0 shifted along one direction
    X[truth, 3] += 8.0
    scores, flagged, raw, info = spectral_scores(X, y, expected_rate=0.1, class_test="none")
    for c in range(4):
        assert flagged[y == c].sum() == int(np.floor(1.5 * 0.1 * 100)) == info[str(c)]["n_removed"]
    assert flagged[truth].all()
    assert np.array_equal(flagged, scores >= 1.5)
    # the class test keeps the budget to the class whose top direction stands out
    scores, flagged, _, info = spectral_scores(X, y, expected_rate=0.1)
    assert [c for c in range(4) if info[str(c)]["filtered"]] == [0]
    assert flagged[truth].all() and flagged.sum() == 15 and scores[truth].min() > scores[y != 0].max()
    with pytest.raises(ValueError, match="expected_rate"):
        spectral_scores(X, y, expected_rate=0.0)


def test_a_clean_reference_breaks_the_symmetry_at_a_half_share():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 16))
    y = np.repeat(np.arange(6), 100)
    truth = np.zeros(600, bool)
    truth[:50] = True  # half of class 0 shifted: the centred score cannot tell the halves apart
    X[truth, 3] += 6.0
    ref = rng.normal(size=(60, 16))
    ref_y = np.repeat(np.arange(6), 10)
    plain = spectral_scores(X, y, expected_rate=0.4, class_test="none")
    s, f, _, info = spectral_scores(X, y, expected_rate=0.4, reference=ref, reference_labels=ref_y)
    m_plain = detection_metrics(plain[0], plain[1], truth)
    m_ref = detection_metrics(s, f, truth)
    assert info["0"]["class_statistic"] == "reference_shift"
    assert [c for c in range(6) if info[str(c)]["filtered"]] == [0]
    assert m_ref["auroc"] >= 0.99 and f[truth].all() and f.sum() == 60, m_ref
    assert m_ref["f1"] > m_plain["f1"] + 0.5


def test_finds_planted_poisons():
    case = planted_digits_case(rate=0.3, rate_of="target")
    assert case.metrics["asr"] >= 0.9, case.metrics
    share = case.truth[case.train.labels == case.attack.target].mean()
    r = get_detector("spectral")(case.model, case.train, expected_rate=float(share))
    m = detection_metrics(r.scores, r.flagged, case.truth)
    assert m["auroc"] >= 0.8 and m["recall"] >= 0.8, m
    # removal budgets hit every class (the paper's rule), yet flags are poisons well above chance
    assert m["precision"] >= 2 * case.truth.mean(), m
