"""Fine-pruning with the l-infinity ranking: prune, fine-tune on clean images, keep the largest fraction
whose fine-tuned clean accuracy holds; the choice never looks at the trigger."""

import numpy as np
import pytest
import torch

from sslguard.repair.fine_pruning import fine_pruning
from sslguard.testing import planted_badnets_classifier_case
from sslguard.train.classifier import evaluate_classifier


@pytest.fixture(scope="module")
def case():
    c = planted_badnets_classifier_case(rate=0.1, rate_of="dataset")
    assert c.metrics["asr"] >= 0.9, c.metrics
    return c


def test_fine_pruning_chooses_without_the_trigger_and_returns_the_chosen_model(case):
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    kw = dict(val=case.test, suspect=case.train, fractions=(0.3, 0.7), epochs=2)
    r = fine_pruning(case.model, case.test, attack=case.attack, **kw)
    assert all(torch.equal(before[k], v) for k, v in case.model.state_dict().items())  # input untouched
    assert r.fractions.tolist() == [0.0, 0.3, 0.7] and np.isclose(r.asr[0], case.metrics["asr"])
    # fine-tuning gives back accuracy that heavy pruning took
    assert r.clean_acc[2] > r.clean_acc_pruned[2], (r.clean_acc_pruned, r.clean_acc)
    assert r.clean_acc[r.chosen] >= r.clean_acc[0] - 0.03
    blind = fine_pruning(case.model, case.test, **kw)  # no attack: the same choice, no ASR
    assert blind.chosen == r.chosen and np.isnan(blind.asr).all()
    got = evaluate_classifier(r.model, case.test, case.attack)
    assert np.isclose(got["clean_acc"], r.clean_acc[r.chosen]) and np.isclose(got["asr"], r.asr[r.chosen])
    if r.chosen:
        mask = r.model.backbone.last_stage[1].mask
        assert int((mask == 0).sum()) == r.n_pruned[r.chosen]


def test_bad_arguments(case):
    with pytest.raises(ValueError, match="fractions"):
        fine_pruning(case.model, case.test, val=case.test, fractions=(1.0,))
    with pytest.raises(ValueError, match="epochs"):
        fine_pruning(case.model, case.test, val=case.test, epochs=0)
