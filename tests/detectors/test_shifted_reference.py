"""A trusted set that differs from the corpus (other writers, other contrast) must not make clean classes
look poisoned, and the planted poisons must still be found.

Three cases: the planted digits case with its trusted split darkened (every pixel x 0.75: a contrast shift
under which the plain binomial test of activation clustering flags 3 to 5 clean classes; the target's
class-test z was 8 to 28 at seeds 0-2 on native, AVX2 and SSE4.1 kernels, clean classes at most 1.7) or
blurred, and MNIST with its two writer halves (needs ../shared/data/mnist-test; skips cleanly without it).
The stronger shifts of the sweep: benchmarks/classifier_shift.md.
"""

import numpy as np
import pytest

from sslguard.data.datasets import ArrayDataset
from sslguard.detectors import get_detector
from sslguard.metrics import detection_metrics
from sslguard.testing import mnist_badnets_classifier_case, planted_badnets_classifier_case


def darkened(ds, factor: float = 0.75) -> ArrayDataset:
    """``ds`` with every pixel scaled by ``factor`` (a contrast shift of the trusted images)."""
    x = np.clip(np.round(ds.images.astype(np.float32) * factor), 0, 255).astype(np.uint8)
    return ArrayDataset(x, ds.labels, ds.classes, keys=ds.keys)


def plain_flags(per_class: dict, alpha: float) -> list[int]:
    """The classes the binomial test alone would flag (the decision before the class test)."""
    cut = alpha / sum(1 for v in per_class.values() if v.get("analysed"))
    return sorted(int(k) for k, v in per_class.items() if v.get("reference_p") is not None and v["reference_p"] <= cut)


def assert_class_margin(r, target: int, factor: float = 2.0):
    """The target stands out by at least ``factor`` times the cut; no clean class passes both tests."""
    per, cut = r.info["per_class"], r.info["outlier_z"]
    assert per[str(target)]["reference_distance_z"] >= factor * cut, per[str(target)]
    assert r.info["flagged_classes"] == [target], {k: (v.get("reference_p"), v.get("reference_distance_z"))
                                                   for k, v in per.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_darkened_references_flag_no_clean_class(seed):
    c = planted_badnets_classifier_case(rate=0.3, rate_of="target", seed=seed)
    assert c.metrics["asr"] >= 0.9 and c.metrics["clean_acc"] >= 0.8, c.metrics
    r = get_detector("activation_clustering")(c.model, c.train, reference=darkened(c.test))
    assert_class_margin(r, c.attack.target)
    m = detection_metrics(r.scores, r.flagged, c.truth)
    assert m["f1"] >= 0.9 and m["auroc"] >= 0.95, m
    # without the class test, the darkened trusted images' avoidance of one cluster flags clean classes
    assert set(plain_flags(r.info["per_class"], r.info["reference_alpha"])) - {c.attack.target}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blurred_references_still_find_the_poisons_by_heatmaps(seed):
    pytest.importorskip("zennit")
    from PIL import Image, ImageFilter

    c = planted_badnets_classifier_case(rate=0.3, rate_of="target", seed=seed)
    blurred = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0))) for im in c.test.images])
    ref = ArrayDataset(blurred, c.test.labels, c.test.classes, keys=c.test.keys)
    r = get_detector("heatmap_clustering")(c.model, c.train, reference=ref)
    assert_class_margin(r, c.attack.target)
    m = detection_metrics(r.scores, r.flagged, c.truth)
    assert m["f1"] >= 0.9, m


def test_class_test_needs_peers():
    """With fewer than three classes holding trusted images there is nothing to compare with: the class
    test passes every class and the binomial test decides alone."""
    from sslguard.detectors.activation_clustering import two_cluster_analysis

    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 8))
    X[:40, 0] += 10.0
    y = np.repeat([0, 1], 100)
    ref, ref_y = rng.normal(size=(40, 8)), np.repeat([0, 1], 20)
    _, flagged, _, _, info = two_cluster_analysis(X, y, reduce="none", reference=ref, reference_labels=ref_y)
    assert info["0"]["poisoned"] and "reference_distance_z" not in info["0"]
    assert flagged[:40].all() and not flagged[40:].any()


@pytest.fixture(scope="module")
def mnist(shared_data):
    root = shared_data / "mnist-test"
    if not (root / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("MNIST test files not present")
    c = mnist_badnets_classifier_case(str(root), split="ordered")
    assert c.metrics["asr"] >= 0.9 and c.metrics["clean_acc"] >= 0.9, c.metrics
    return c


@pytest.fixture(scope="module")
def mnist_results(mnist):
    c, res = mnist, {}
    res["activation_clustering"] = get_detector("activation_clustering")(c.model, c.train, reference=c.test)
    if _has_zennit():
        res["heatmap_clustering"] = get_detector("heatmap_clustering")(c.model, c.train, reference=c.test)
    res["spectral"] = get_detector("spectral")(c.model, c.train, reference=c.test)
    res["critical_layer"] = get_detector("critical_layer")(c.model, c.train, c.test)
    return res


def _has_zennit() -> bool:
    import importlib.util

    return importlib.util.find_spec("zennit") is not None


@pytest.mark.parametrize("name", ["activation_clustering", "heatmap_clustering"])
def test_mnist_writer_shift_flags_no_clean_class(mnist, mnist_results, name):
    if name not in mnist_results:
        pytest.skip("zennit not installed")
    r = mnist_results[name]
    # a MNIST classifier trained on another CPU's kernels is another model: the target's z was 5.15 against
    # the cut of 3.0 on an Intel AVX-512 CPU (one thread), above 6 on the AMD one this margin was set on
    assert_class_margin(r, mnist.attack.target, factor=1.5)
    m = detection_metrics(r.scores, r.flagged, mnist.truth)
    assert m["precision"] >= 0.95 and m["recall"] >= 0.7, m
    # the plain binomial test flagged clean classes here (activations 2, heatmaps 8 of 9)
    assert set(plain_flags(r.info["per_class"], r.info["reference_alpha"])) - {mnist.attack.target}
    with pytest.raises(ValueError, match="reference_tolerance"):
        get_detector(name)(mnist.model, mnist.train.subset(np.arange(50)), reference=mnist.test, reference_tolerance=0)


def test_mnist_writer_shift_spectral_and_critical_layer_keep_to_the_target(mnist, mnist_results):
    target = mnist.attack.target
    assert mnist_results["spectral"].info["filtered_classes"] == [target]
    cl = mnist_results["critical_layer"]
    assert cl.info["examined_classes"] == [target], cl.info["per_class"]
    assert detection_metrics(cl.scores, cl.flagged, mnist.truth)["precision"] >= 0.8
    # the paper's rule (every class) flags images in every class under this shift
    paper = get_detector("critical_layer")(mnist.model, mnist.train, mnist.test, class_test="none")
    assert len(np.unique(mnist.train.labels[paper.flagged])) == 10


def test_mnist_writer_shift_fused_flags(mnist, mnist_results):
    """The acceptance bar of the shifted case: the union of the classifier-stage flags keeps precision
    >= 0.8 at recall >= 0.9 (measured: benchmarks/classifier_shift.md)."""
    fused = np.any([r.flagged for r in mnist_results.values()], axis=0)
    m = detection_metrics(fused.astype(float), fused, mnist.truth)
    assert m["precision"] >= 0.8 and m["recall"] >= 0.9, m
