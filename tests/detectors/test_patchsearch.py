import numpy as np
import pytest

from sslguard.testing import PLANTED_ENCODER_K, planted_patch_encoder_case, untrained_encoder_case
from sslguard.cluster import kmeans
from sslguard.detectors import get_detector
from sslguard.embed import embed_dataset
from sslguard.metrics import detection_metrics


@pytest.fixture(scope="module")
def case():
    c = planted_patch_encoder_case(seed=0)
    _, emb = embed_dataset(c.backbone, c.dataset, normalize=True, progress=False)
    return c, emb, kmeans(emb, PLANTED_ENCODER_K, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patchsearch_ranks_planted_poisons_first(seed):
    c = planted_patch_encoder_case(seed=seed)
    _, emb = embed_dataset(c.backbone, c.dataset, normalize=True, progress=False)
    clusters = kmeans(emb, PLANTED_ENCODER_K, seed=0)
    res = get_detector("patchsearch")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                      test_per_cluster=4, samples_per_round=3, final_samples=12, n_top_windows=8,
                                      classifier_images=300, classifier_epochs=3, seed=0)
    m = detection_metrics(res.scores, res.flagged, c.truth)
    assert m["auroc"] > 0.9, m
    assert m["toptrue_precision"] > 0.8, m
    # and it flags what it ranks first (the paper's cut, probability 0.5, flagged none of them)
    assert m["f1"] >= 0.9, m
    assert res.info["top_window_pull_rate"] > 0.8 and res.info["evidence"].startswith("trigger windows")
    # the search ended on the trigger cluster and its top windows come from poisoned images
    final = res.info["final_cluster"]
    assert len(final) == 1 and c.truth[clusters.assignments == final[0]].mean() > 0.8
    top = [w["index"] for w in res.info["top_windows"]]
    assert c.manifest.is_poisoned(np.asarray(top)).mean() > 0.8
    scored = res.evidence["poison_score"] >= 0
    assert scored.sum() == res.info["n_scored"] and scored.sum() < len(c.dataset)  # the search pruned


def test_patchsearch_validates_prune_fraction(case):
    c, emb, clusters = case
    with pytest.raises(ValueError, match="prune_fraction"):
        get_detector("patchsearch")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                    prune_fraction=1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_encoder_that_learned_no_trigger_flags_nothing(seed):
    """A randomly initialised encoder learned nothing: its best windows pull few pasted images, so the
    search found no trigger and the corpus is not cut (the logits still rank)."""
    c, backbone, emb, clusters = untrained_encoder_case(seed)
    res = get_detector("patchsearch")(backbone=backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                      test_per_cluster=4, samples_per_round=3, final_samples=12, n_top_windows=8,
                                      classifier_images=300, classifier_epochs=3, seed=0)
    assert not res.flagged.any() and res.info["top_window_pull_rate"] < 0.4, res.info["evidence"]
    assert res.info["evidence"].startswith("none") and np.isfinite(res.scores).all()
