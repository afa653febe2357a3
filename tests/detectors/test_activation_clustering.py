"""Activation clustering (Chen et al. 2018): finds planted BadNets poisons; 1 process == 2 processes."""


import numpy as np
import pytest
import torch

from sslguard.detectors import get_detector
from sslguard.detectors.activation_clustering import two_cluster_analysis
from sslguard.metrics import detection_metrics
from sslguard.testing import planted_badnets_classifier_case
from tests.multiproc import run_script_distributed

CASE = dict(rate=0.3, rate_of="target")  # poisons are about a quarter of the target label


@pytest.fixture(scope="module")
def case():
    c = planted_badnets_classifier_case(**CASE)
    assert c.metrics["asr"] >= 0.9 and c.metrics["clean_acc"] >= 0.8, c.metrics  # the backdoor was learned
    return c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_planted_poisons(seed):
    """With the trusted test split as reference (as the pipeline passes it), at three seeds: the target
    class alone is flagged, with a binomial p far below the cut, and its poison cluster is the poisons.
    (The reference-free silhouette outlier rule is tested on planted Gaussians below; on this model the
    target's silhouette z ranged -0.6 to 4.2 over seeds, see the module's Limits.)"""
    c = planted_badnets_classifier_case(**CASE, seed=seed)
    assert c.metrics["asr"] >= 0.9 and c.metrics["clean_acc"] >= 0.8, c.metrics
    r = get_detector("activation_clustering")(c.model, c.train, reference=c.test)
    m = detection_metrics(r.scores, r.flagged, c.truth)
    assert r.info["decision"] == "auto" and r.info["flagged_classes"] == [c.attack.target], r.info["per_class"]
    per = r.info["per_class"]
    cut = r.info["reference_alpha"] / len(per)
    assert per[str(c.attack.target)]["reference_p"] <= cut / 10, per[str(c.attack.target)]
    assert m["auroc"] >= 0.95 and m["f1"] >= 0.9, m
    # flags are exactly the scores above the threshold, and cluster evidence matches them
    assert np.array_equal(r.flagged, r.scores > r.threshold)
    assert np.all(r.evidence["cluster"][r.flagged] == 1)


def test_paper_size_rule_and_options_run(case):
    acts = get_detector("activation_clustering")(case.model, case.train, reduce="pca", decision="size")
    assert acts.info["decision"] == "size" and len(acts.scores) == len(case.train)
    with pytest.raises(ValueError, match="decision"):
        get_detector("activation_clustering")(case.model, case.train, decision="vote")


def test_two_cluster_analysis_on_a_planted_gaussian_split():
    rng = np.random.default_rng(0)
    n_per, d = 120, 32
    feats, labels, truth = [], [], []
    for c in range(6):
        x = rng.normal(size=(n_per, d))
        t = np.zeros(n_per, bool)
        if c == 2:  # a fifth of class 2 sits far away along one direction
            t[: n_per // 5] = True
            x[t, 0] += 12.0
        feats.append(x), labels.append(np.full(n_per, c)), truth.append(t)
    X, y, truth = np.concatenate(feats), np.concatenate(labels), np.concatenate(truth)
    scores, flagged, cluster, margin, info = two_cluster_analysis(X, y, reduce="pca", seed=0)
    assert np.array_equal(flagged, truth)
    assert [k for k, v in info.items() if v["poisoned"]] == ["2"]
    assert scores[truth].min() > scores[~truth].max()


def test_auto_picks_the_tighter_cluster_when_the_split_is_even():
    rng = np.random.default_rng(1)
    d = 16
    X, y = [], []
    for c in range(5):
        x = rng.normal(size=(100, d))
        if c == 0:  # half of class 0 is a tight blob far away (poisons sharing one trigger feature)
            x[:50] = rng.normal(scale=0.2, size=(50, d))
            x[:50, 0] += 10.0
        X.append(x), y.append(np.full(100, c))
    X, y = np.concatenate(X), np.concatenate(y)
    truth = np.zeros(len(y), bool)
    truth[:50] = True
    _, flagged, _, _, info = two_cluster_analysis(X, y, reduce="pca", poison_cluster="auto", seed=0)
    assert np.array_equal(flagged, truth), info["0"]
    _, flagged_small, _, _, _ = two_cluster_analysis(X, y, reduce="pca", poison_cluster="smaller", seed=0)
    assert info["0"]["cluster_sizes"] == [50, 50] and flagged_small[truth].sum() in (0, 50)


def test_whitened_pca_gives_the_same_clusters_as_fastica():
    # FastICA's sources are the whitened components times an orthogonal matrix: same distances,
    # hence the same k-means split, silhouettes and flags, without the ICA iterations.
    rng = np.random.default_rng(2)
    X = np.abs(rng.normal(size=(600, 40)))
    y = np.repeat(np.arange(3), 200)
    X[:60, :5] += 3.0  # a planted group in class 0
    fast = two_cluster_analysis(X, y, reduce="fastica", seed=0)
    quick = two_cluster_analysis(X, y, reduce="ica", seed=0)
    assert np.array_equal(fast[2], quick[2]) and np.array_equal(fast[1], quick[1])
    np.testing.assert_allclose(fast[0], quick[0], atol=1e-6)
    for c in ("0", "1", "2"):
        assert np.isclose(fast[4][c]["silhouette"], quick[4][c]["silhouette"], atol=1e-6)


def test_a_clean_reference_picks_the_poison_side_of_an_even_split():
    rng = np.random.default_rng(3)
    d = 16
    X, y = [], []
    for c in range(5):
        x = rng.normal(size=(100, d))
        if c == 0:  # half of class 0 is far away and as spread as the clean half: no size or tightness cue
            x[:50, 0] += 10.0
        X.append(x), y.append(np.full(100, c))
    X, y = np.concatenate(X), np.concatenate(y)
    truth = np.zeros(len(y), bool)
    truth[:50] = True
    ref = rng.normal(size=(50, d))  # trusted clean images, ten per class
    ref_y = np.repeat(np.arange(5), 10)
    _, flagged, _, _, info = two_cluster_analysis(X, y, reduce="pca", reference=ref, reference_labels=ref_y, seed=0)
    assert np.array_equal(flagged, truth), info["0"]
    assert info["0"]["reference_counts"] in ([10, 0], [0, 10])
    with pytest.raises(ValueError, match="together"):
        two_cluster_analysis(X, y, reference=ref)



def test_reference_decides_the_class_where_the_silhouette_misleads():
    """Class 1 has two natural, well-separated styles (a silhouette outlier, yet clean); class 0 hides a
    17% poison group. The trusted images land in both of class 1's clusters but avoid class 0's poison
    cluster: the binomial test flags class 0 alone, where the silhouette rule also flags class 1."""
    rng = np.random.default_rng(4)
    d, n = 12, 180
    X, y = [], []
    for c in range(6):
        x = rng.normal(size=(n, d))
        if c == 1:
            x[:60, 0] += 12.0  # a second writing style: a third of the class, far away
        if c == 0:
            x[:30, 1] += 8.0  # poisons: a sixth of the class, their own cluster
        X.append(x), y.append(np.full(n, c))
    X, y = np.concatenate(X), np.concatenate(y)
    truth = np.zeros(len(y), bool)
    truth[:30] = True
    ref, ref_y = [], []
    for c in range(6):
        r = rng.normal(size=(40, d))
        if c == 1:
            r[:13, 0] += 12.0  # trusted images of class 1 come in both styles
        ref.append(r), ref_y.append(np.full(40, c))
    ref, ref_y = np.concatenate(ref), np.concatenate(ref_y)
    _, flagged_sil, _, _, info_sil = two_cluster_analysis(X, y, reduce="none", seed=0)
    assert info_sil["1"]["poisoned"]  # the silhouette rule is misled by the clean two-style class
    _, flagged, _, _, info = two_cluster_analysis(X, y, reduce="none", reference=ref, reference_labels=ref_y, seed=0)
    assert [c for c, v in info.items() if v["poisoned"]] == ["0"], {c: v["reference_p"] for c, v in info.items()}
    assert flagged[truth].mean() > 0.8 and flagged[~truth].mean() < 0.01
    with pytest.raises(ValueError, match="reference"):
        two_cluster_analysis(X, y, decision="reference")


WORKER = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from accelerate import Accelerator
from sslguard.data import load_digits_dataset, poison_dataset
from sslguard.data.attacks import build_attack
from sslguard.detectors import get_detector
from sslguard.models.classifier import build_classifier
acc = Accelerator(cpu=True)
assert acc.num_processes == 2
out = sys.argv[1]
train = load_digits_dataset("train")
attack = build_attack("badnets", target=0, rate={rate}, rate_of="{rate_of}", seed=0, size_fraction=0.15)
ds, _ = poison_dataset(train, attack)
model = build_classifier("convnet4", 10, width=16)
model.load_state_dict(torch.load(out + "/model.pt"))
model.eval()
ac = get_detector("activation_clustering")(model, ds, accelerator=acc, batch_size=100)
sp = get_detector("spectral")(model, ds, accelerator=acc, batch_size=100, expected_rate=0.3)
if acc.is_main_process:
    np.savez(out + "/two.npz", ac_scores=ac.scores, ac_flagged=ac.flagged, ac_index=ac.index,
             sp_scores=sp.scores, sp_flagged=sp.flagged)
acc.wait_for_everyone()
from sslguard.cli import close_process_group
close_process_group()
"""


def test_two_processes_give_the_same_scores_as_one(case, tmp_path):
    torch.save(case.model.state_dict(), tmp_path / "model.pt")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(**CASE))
    run_script_distributed(script, [str(tmp_path)])
    two = np.load(tmp_path / "two.npz")
    ac = get_detector("activation_clustering")(case.model, case.train, batch_size=256)
    sp = get_detector("spectral")(case.model, case.train, batch_size=256, expected_rate=0.3)
    assert np.array_equal(two["ac_index"], ac.index)
    np.testing.assert_allclose(two["ac_scores"], ac.scores, atol=1e-4)
    assert np.array_equal(two["ac_flagged"], ac.flagged)
    np.testing.assert_allclose(two["sp_scores"], sp.scores, rtol=1e-4, atol=1e-6)
    assert np.array_equal(two["sp_flagged"], sp.flagged)
