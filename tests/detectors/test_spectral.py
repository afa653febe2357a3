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
    scaled, flagged, raw, info = spectral_scores(X, y, expected_rate=0.1)
    for c in range(4):
        assert flagged[y == c].sum() == int(np.floor(1.5 * 0.1 * 100)) == info[str(c)]["n_removed"]
    assert flagged[truth].all()
    assert np.array_equal(flagged, scaled >= 1.0)
    with pytest.raises(ValueError, match="expected_rate"):
        spectral_scores(X, y, expected_rate=0.0)


def test_finds_planted_poisons():
    case = planted_digits_case(rate=0.3, rate_of="target")
    assert case.metrics["asr"] >= 0.9, case.metrics
    share = case.truth[case.train.labels == case.attack.target].mean()
    r = get_detector("spectral")(case.model, case.train, expected_rate=float(share))
    m = detection_metrics(r.scores, r.flagged, case.truth)
    assert m["auroc"] >= 0.8 and m["recall"] >= 0.8, m
    # removal budgets hit every class (the paper's rule), yet flags are poisons well above chance
    assert m["precision"] >= 2 * case.truth.mean(), m
