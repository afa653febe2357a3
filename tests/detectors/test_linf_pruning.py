"""l-infinity pruning (Xu et al. 2021) lowers the attack success rate of a backdoored model."""

import numpy as np
import pytest
import torch

from sslguard.bench.classifier import planted_digits_case
from sslguard.detectors import get_detector
from sslguard.train.classifier import evaluate_classifier


def test_pruning_lowers_asr_and_the_curve_matches_the_pruned_model():
    # 10% of the dataset: a backdoor the pruning can reach within a few points of clean accuracy
    case = planted_digits_case(rate=0.1, rate_of="dataset")
    assert case.metrics["asr"] >= 0.9, case.metrics
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    p = get_detector("linf_pruning")(case.model, case.test, attack=case.attack, max_acc_drop=0.05)
    # the input model is untouched; the result holds a pruned copy
    assert all(torch.equal(before[k], v) for k, v in case.model.state_dict().items())
    assert p.fractions[0] == 0 and np.isclose(p.asr[0], case.metrics["asr"])
    assert p.asr[p.chosen] <= 0.6 * p.asr[0], (p.fractions, p.clean_acc, p.asr)
    assert p.clean_acc[p.chosen] >= p.clean_acc[0] - 0.05
    assert sorted(p.ranking.tolist()) == list(range(case.model.feature_dim))
    assert np.all(np.diff(p.linf[p.ranking]) >= 0)  # ascending order of the l-inf norm
    got = evaluate_classifier(p.model, case.test, case.attack)
    assert np.isclose(got["clean_acc"], p.clean_acc[p.chosen]) and np.isclose(got["asr"], p.asr[p.chosen])
    assert int((p.mask == 0).sum()) == p.n_pruned[p.chosen]


def test_ranking_on_the_suspect_training_set_prunes_the_backdoor_first():
    # the poisoned training set (labels unused) stands in for the paper's triggered images
    case = planted_digits_case(rate=0.1, rate_of="dataset")
    p = get_detector("linf_pruning")(case.model, case.test, suspect=case.train, attack=case.attack, max_acc_drop=0.03)
    assert p.info["order"] == "suspect" and p.info["n_suspect"] == len(case.train)
    assert np.all(np.diff(p.rank_key[p.ranking]) <= 0)  # descending tail ratio
    assert p.asr[p.chosen] <= 0.2 * p.asr[0], (p.fractions, p.clean_acc, p.asr)
    assert p.clean_acc[p.chosen] >= p.clean_acc[0] - 0.03
    with pytest.raises(ValueError, match="suspect"):
        get_detector("linf_pruning")(case.model, case.test, order="suspect")
