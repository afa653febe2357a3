"""l-infinity pruning (Xu et al. 2021) lowers the attack success rate of a backdoored model."""

import numpy as np
import pytest
import torch

from sslguard.testing import planted_badnets_classifier_case
from sslguard.repair.linf_pruning import linf_pruning
from sslguard.train.classifier import evaluate_classifier


def test_pruning_lowers_asr_and_the_curve_matches_the_pruned_model():
    # 10% of the dataset: a backdoor the pruning can reach within a few points of clean accuracy
    case = planted_badnets_classifier_case(rate=0.1, rate_of="dataset")
    assert case.metrics["asr"] >= 0.9, case.metrics
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    p = linf_pruning(case.model, case.test, attack=case.attack, max_acc_drop=0.05)
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


def _channels_to_clear(p, asr_share=0.2):
    """Channels pruned (in ``p``'s order) before the ASR falls to ``asr_share`` of the unpruned model's."""
    return int(p.n_pruned[np.flatnonzero(p.asr <= asr_share * p.asr[0])[0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_on_the_suspect_training_set_prunes_the_backdoor_first(seed):
    """The poisoned training set (labels unused) stands in for the paper's triggered images. At three
    seeds, one channel at a time, over the first half of the channels: the ranking's mean ASR (the
    area under its pruning curve) is within 0.1 of an oracle's that ranks by the true poisons' own
    activations, and under half the clean-only control order's.

    Why areas and not "channels until the ASR falls under 0.2": on this narrow ConvNet one channel
    moves the ASR by about a tenth on the steep part of the curve, so a first-crossing count moves by a
    channel or two with the CPU's float order (ours cleared from 1 before to 3 after the oracle on native
    AVX-512, AVX2 and SSE4.1 kernels; "within two" failed on one), while the areas differed by at most
    0.021 and the control's was 1.0 against at most 0.28.
    For the same reason the 3-point stopping point is asked only to lower the ASR below where the
    control's stop leaves it: there it left 0.16-0.81 of the ASR and the oracle order 0.12-0.77 at
    the same budget (native, AVX2 and SSE4.1 kernels); the first test asks a 5-point budget for a 40%
    drop."""
    case = planted_badnets_classifier_case(rate=0.1, rate_of="dataset", seed=seed)
    assert case.metrics["asr"] >= 0.9, case.metrics
    n_ch = case.model.feature_dim
    kw = dict(attack=case.attack, max_acc_drop=0.03, fractions=np.arange(n_ch + 1) / n_ch)
    p = linf_pruning(case.model, case.test, suspect=case.train, **kw)
    assert p.info["order"] == "suspect" and p.info["n_suspect"] == len(case.train)
    assert np.all(np.diff(p.rank_key[p.ranking]) <= 0)  # descending tail ratio
    oracle = linf_pruning(case.model, case.test, suspect=case.train.subset(np.flatnonzero(case.truth)),
                                          quantile=0.5, **kw)
    control = linf_pruning(case.model, case.test, order="descending", **kw)
    half = slice(0, n_ch // 2 + 1)
    ours, best, ctl = (float(r.asr[half].mean()) for r in (p, oracle, control))
    assert ours <= best + 0.1 and ctl >= 2 * ours, (ours, best, ctl, _channels_to_clear(p),
                                                    _channels_to_clear(oracle))
    # the trigger-free stopping point keeps clean accuracy within the budget and lowers the ASR, below
    # where the control order's stop leaves it
    assert p.clean_acc[p.chosen] >= p.clean_acc[0] - 0.03
    assert p.asr[p.chosen] < p.asr[0] and p.asr[p.chosen] < control.asr[control.chosen], (
        p.n_pruned[p.chosen], p.asr[p.chosen], control.asr[control.chosen])


def test_suspect_order_needs_the_suspect_images():
    case = planted_badnets_classifier_case(rate=0.1, rate_of="dataset")
    with pytest.raises(ValueError, match="suspect"):
        linf_pruning(case.model, case.test, order="suspect")
