"""Critical-layer filtering (Jebreel et al. 2023) with a small trusted benign set."""

import numpy as np
import pytest

from sslguard.testing import planted_badnets_classifier_case
from sslguard.data.datasets import subset_per_class
from sslguard.detectors import get_detector
from sslguard.metrics import detection_metrics


@pytest.fixture(scope="module")
def case():
    c = planted_badnets_classifier_case(rate=0.3, rate_of="target")
    assert c.metrics["asr"] >= 0.9, c.metrics
    return c


def test_finds_planted_poisons_with_twenty_benign_images_per_class(case):
    benign = subset_per_class(case.test, 20, seed=0)
    r = get_detector("critical_layer")(case.model, case.train, benign)
    m = detection_metrics(r.scores, r.flagged, case.truth)
    # the benign statistics come from 20 images per class, so the false-positive rate is loose
    assert m["auroc"] >= 0.9 and m["tpr"] >= 0.7 and m["fpr"] <= 0.15, m
    assert set(r.info["critical_layers"]) <= set(case.model.stage_names + ["logits"])
    # flags are the paper's (score > tau) in the classes the class test examines: here the target alone
    assert r.info["examined_classes"] == [case.attack.target], r.info["per_class"]
    examined = np.isin(case.train.labels, r.info["examined_classes"])
    assert r.info["cut"] >= 2.5 and np.array_equal(r.flagged, (r.scores > r.info["cut"]) & examined)
    paper = get_detector("critical_layer")(case.model, case.train, benign, class_test="none")
    assert np.array_equal(paper.flagged, paper.scores > 2.5) and paper.flagged.sum() > r.flagged.sum()
    # the target class's training images drift furthest from their benign centroid at the critical layers
    gap = {k: np.asarray(v) for k, v in r.info["gap"].items()}
    assert all(int(np.argmax(gap[layer])) == case.attack.target for layer in r.info["critical_layers"])


def test_fixed_layers_and_a_too_small_benign_set(case):
    benign = subset_per_class(case.test, 10, seed=0)
    r = get_detector("critical_layer")(case.model, case.train, benign, layers=["block2"])
    assert r.info["critical_layers"] == ["block2"]
    tiny = subset_per_class(case.test, 2, seed=0)
    with pytest.raises(ValueError, match="at least 3 images"):
        get_detector("critical_layer")(case.model, case.train, tiny)


def test_the_cut_follows_the_clean_classes_when_the_benign_set_is_shifted():
    """Scores of the unexamined classes centred near 0 with unit spread keep the paper's cut; shifted up by 2
    (a trusted set from another population), the cut moves up with them and the clean images of the
    examined class that only the shift pushed over tau are no longer flagged."""
    from sslguard.detectors.critical_layer import _null_cut

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 200)
    examined = labels == 0
    scores = rng.normal(size=len(labels))
    assert 2.5 <= _null_cut(scores, examined, 2.5) < 2.65  # sampling noise of the median and MAD only
    shifted = scores + 2.0
    cut = _null_cut(shifted, examined, 2.5)
    assert 4.2 < cut < 4.8
    clean_target = shifted[examined]
    assert (clean_target > 2.5).mean() > 0.2 and (clean_target > cut).mean() < 0.03
    assert _null_cut(shifted, np.zeros_like(examined), 2.5) == 2.5  # nothing examined: nothing to calibrate
