"""Critical-layer filtering (Jebreel, Domingo-Ferrer & Li 2023, "Defending against Backdoor Attacks by
Layer-wise Feature Analysis", PAKDD, arXiv:2302.12758).

The paper's observation: benign and poisoned images that end in the same class are told apart best at
one *critical layer*, often not the penultimate one; there, a poisoned image's features are far from
the centroid of benign images of its (target) label. The filter compares each image's cosine
similarity to its label's benign centroid with the spread of that similarity over benign images.

What is implemented (per candidate layer ``l``: globally average-pooled stage outputs and the logits):

1. centroids ``mu[c, l]`` from the trusted benign images of each class ``c`` (``benign``);
2. similarity ``s[i, l] = cos(f_l(x_i), mu[y_i, l])``, standardised by the benign images' mean and
   std of that similarity (benign images are scored against a leave-one-out centroid, so they are
   not compared with themselves): ``z[i, l]``;
3. *locating the critical layer without ground truth*: ``gap[c, l] = -mean_i z[i, l]`` over the
   suspect images labelled ``c`` (how far the class's training images fall below the benign
   similarity, in benign standard deviations). The paper locates it from benign/poison separation;
   with no poison labels, a layer at which a whole label's training images drift from its benign
   centroid is the observable trace of that separation. The ``n_critical`` layers with the largest
   ``max_c gap[c, l]`` are the critical layers;
4. per-class weights ``w[c, l]`` proportional to ``max(gap[c, l], 0)`` over the critical layers
   (uniform for a class with no positive gap), and the weighted similarity ``S_i = sum_l w z``;
5. ``score = -(S_i - mean_B) / std_B`` with the benign images' mean and std of ``S`` for the label;
   the paper flags ``score > tau`` (its ``mean - tau * std`` rule, ``tau = 2.5``);
6. *class test* (this package's addition, ``class_test="outlier"``, default): those flags count only in a
   class whose flag rate (share of its images above ``tau``) and mean score both stand out among the
   classes', at least ``outlier_z`` robust standard deviations (1.4826 * MAD) above their medians, the
   spread taken no smaller than a class's own sampling noise (binomial for the rate, the standard error
   for the mean). ``class_test="none"`` is the paper's rule (every class).

Why the class test: steps 2 and 5 measure each image against the trusted images. When those come
from another population than the corpus (other writers, another camera), every corpus image sits a
little farther from its benign centroid than the benign images do, and the per-image cut fires in every
class. On MNIST with the other half of the writers as benign set the paper's rule flagged images in all
ten classes (precision 0.57); the class test kept the target alone (benchmarks/classifier_shift.md). A
shift touches every class, an all-to-one backdoor one: the other classes' flag rates are the null.
Scores are the paper's in every class (rankings and AUROC do not change); ``flagged`` is ``score > tau``
in the examined classes (``info["examined_classes"]``).

*Calibrated cut* (``calibrate="classes"``, default; also this package's): ``tau`` assumes the benign
images' statistics describe the corpus' clean images. Under a shifted trusted set every corpus image
sits lower, the class test still finds the target class (its rate stands out), but inside it the cut
at ``tau`` also takes many of its clean images (Imagenette with colour-cast trusted images,
``benchmarks/classifier_generalization.md``). The unexamined classes are the null the class test
already relies on, so the cut is ``tau`` standard deviations measured on them: their median + ``tau``
x their robust spread (MAD, taken no smaller than the benign unit), never below ``tau``. With an
unshifted trusted set their median is near 0 and the paper's cut stands. (Matching the paper's tail
share instead, a high quantile of their scores, cut recall even unshifted: the clean classes' scores
are heavier-tailed than the benign images'; ``benchmarks/classifier_generalization_notes.md``.)

``layers=[...]`` fixes the critical layers instead of step 3 (for example the layer a study with
ground truth found). ``info`` holds the per-layer gaps and weights, and per class the flag rate, mean
score, their robust z and whether the class was examined.

Limits: it needs a small trusted benign set with correct labels (a few images per class at least; the
statistics of step 2 and 5 come from it, and their noise sets the false-positive rate — tens per class is
better). *Shift tolerated*: a trusted set from other writers (above) and blurred benign digits (planted
digits case); under stronger shifts of the benign images (darkened, brightened or thickened digits,
blurred MNIST) the per-image cut fires on nearly every image of every class, no class stands out and the
class test flags nothing (it fails closed: benchmarks/classifier_shift.md). With 20 benign images per
class the layer choice of step 3 can follow a clean class whose few benign images are atypical (planted
case, seed 2: the logits, driven by a clean class, which the class test then examines). The class test
assumes a minority of classes is poisoned (all-to-one); use ``class_test="none"`` for all-to-all attacks.
A poison share so small that the target's flag rate stays within the other classes' spread is missed.
Pooling loses where in the map a feature fires. A clean-label attack, whose poisons are genuine images of
the class, moves them little at early layers.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from sslguard.detectors.activation_clustering import peer_z
from sslguard.detectors.base import DetectionResult, register_detector

_EPS = 1e-8
CLASS_TESTS = ("outlier", "none")
CALIBRATIONS = ("classes", "benign")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + _EPS)


def _layer_z(suspect, suspect_labels, benign, benign_labels, names, classes):
    """Step 2: every image's similarity to its label's benign centroid per layer, standardised by the
    benign images' (leave-one-out) similarities: ``(z_suspect, z_benign)``, one column per layer."""
    z_s = np.zeros((len(suspect_labels), len(names)))
    z_b = np.zeros((len(benign_labels), len(names)))
    for j, name in enumerate(names):
        fs, fb = np.asarray(suspect[name], np.float64), np.asarray(benign[name], np.float64)
        for c in classes:
            bi, si = np.flatnonzero(benign_labels == c), np.flatnonzero(suspect_labels == c)
            total = fb[bi].sum(0)
            mu = _unit((total / len(bi))[None])[0]
            # Leave-one-out centroids: a benign image is not compared with a mean that contains it.
            loo = _unit((total[None] - fb[bi]) / (len(bi) - 1))
            sb = (_unit(fb[bi]) * loo).sum(1)
            ss = _unit(fs[si]) @ mu
            m, sd = sb.mean(), sb.std(ddof=1) + _EPS
            z_b[bi, j] = (sb - m) / sd
            z_s[si, j] = (ss - m) / sd
    return z_s, z_b


def _class_test(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray, tau: float, class_test: str,
                outlier_z: float, per_class: dict) -> np.ndarray:
    """Which classes' flags count (module docstring, *class test*); records ``flag_rate``, ``mean_score``,
    their robust z among the classes and ``examined`` per class, and returns a per-image mask."""
    per = [scores[labels == c] for c in classes]
    rates = np.array([(s > tau).mean() for s in per])
    means = np.array([s.mean() for s in per])
    n = np.array([len(s) for s in per])
    if class_test == "outlier" and len(classes) >= 3:
        med = float(np.median(rates))
        # the spread across classes is never taken below a class's own sampling noise (binomial for the
        # rate, the standard error for the mean)
        z_rate = peer_z(rates, float(np.median(np.sqrt(med * (1 - med) / n))))
        z_mean = peer_z(means, float(np.median([s.std() / np.sqrt(len(s)) for s in per])))
        examined = (z_rate >= outlier_z) & (z_mean >= outlier_z)
    else:  # the paper's rule (also the only option with fewer than three classes to compare)
        z_rate = z_mean = np.full(len(classes), np.nan)
        examined = np.ones(len(classes), dtype=bool)
    mask = np.zeros(len(labels), dtype=bool)
    for i, c in enumerate(classes):
        per_class[str(int(c))].update(
            flag_rate=float(rates[i]), mean_score=float(means[i]), examined=bool(examined[i]),
            flag_rate_z=None if np.isnan(z_rate[i]) else float(z_rate[i]),
            mean_score_z=None if np.isnan(z_mean[i]) else float(z_mean[i]))
        mask[labels == c] = examined[i]
    return mask


def _null_cut(scores: np.ndarray, examined: np.ndarray, tau: float) -> float:
    """The per-image cut: ``tau`` benign standard deviations, measured on the unexamined (clean) classes'
    scores where those sit higher or spread wider than the benign images' (median + ``tau`` x 1.4826 MAD),
    never below ``tau``."""
    null = scores[~examined]
    if not examined.any() or len(null) < 100:
        return float(tau)
    med = float(np.median(null))
    spread = 1.4826 * float(np.median(np.abs(null - med)))
    return float(max(tau, med + tau * max(1.0, spread)))


def critical_layer_scores(
    suspect: dict[str, np.ndarray],
    suspect_labels: np.ndarray,
    benign: dict[str, np.ndarray],
    benign_labels: np.ndarray,
    *,
    tau: float = 2.5,
    n_critical: int = 2,
    layers: Sequence[str] | None = None,
    class_test: str = "outlier",
    outlier_z: float = 3.0,
    calibrate: str = "classes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(scores, flagged, weighted_similarity, info)`` from per-layer pooled features (dicts by layer).

    ``class_test``: ``"outlier"`` (default) keeps the flags of the classes whose flag rate stands out among
    the classes' by ``outlier_z`` robust deviations; ``"none"`` keeps every class's (the paper).
    ``calibrate``: ``"classes"`` (default) measures the per-image cut on the unexamined classes' scores
    (module docstring, *calibrated cut*); ``"benign"`` keeps ``tau`` (the paper)."""
    if class_test not in CLASS_TESTS:
        raise ValueError(f"class_test must be one of {CLASS_TESTS}, got {class_test!r}")
    if calibrate not in CALIBRATIONS:
        raise ValueError(f"calibrate must be one of {CALIBRATIONS}, got {calibrate!r}")
    names = list(suspect)
    suspect_labels = np.asarray(suspect_labels)
    benign_labels = np.asarray(benign_labels)
    classes = np.unique(suspect_labels)
    missing = [int(c) for c in classes if (benign_labels == c).sum() < 3]
    if missing:
        raise ValueError(f"critical_layer: the benign set needs at least 3 images of every class; "
                         f"classes {missing} have fewer")
    z_s, z_b = _layer_z(suspect, suspect_labels, benign, benign_labels, names, classes)
    gap = np.stack([-z_s[suspect_labels == c].mean(0) for c in classes])  # (classes, layers)
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise KeyError(f"critical_layer: unknown layers {unknown}; candidates are {names}")
        crit = [names.index(n) for n in layers]
    else:
        k = max(1, min(int(n_critical), len(names)))
        crit = list(np.argsort(-gap.max(0), kind="stable")[:k])
    weights = np.zeros((len(classes), len(names)))
    for ci in range(len(classes)):
        g = np.clip(gap[ci, crit], 0, None)
        weights[ci, crit] = g / g.sum() if g.sum() > 0 else 1.0 / len(crit)
    cls_pos = {int(c): i for i, c in enumerate(classes)}
    w_s = weights[[cls_pos[int(c)] for c in suspect_labels]]
    w_b = weights[[cls_pos[int(c)] for c in benign_labels]]
    s_s, s_b = (z_s * w_s).sum(1), (z_b * w_b).sum(1)
    scores = np.zeros(len(suspect_labels))
    per_class = {}
    for c in classes:
        bi, si = benign_labels == c, suspect_labels == c
        m, sd = s_b[bi].mean(), s_b[bi].std(ddof=1) + _EPS
        scores[si] = -(s_s[si] - m) / sd
        per_class[str(int(c))] = {"benign_mean": float(m), "benign_std": float(sd), "n_benign": int(bi.sum()),
                                  "weights": {names[j]: float(weights[cls_pos[int(c)], j]) for j in crit}}
    examined = _class_test(scores, suspect_labels, classes, tau, class_test, outlier_z, per_class)
    cut = _null_cut(scores, examined, tau) if calibrate == "classes" else float(tau)
    flagged = (scores > cut) & examined
    for c in classes:
        per_class[str(int(c))]["n_flagged"] = int(flagged[suspect_labels == c].sum())
    info = {"layers": names, "critical_layers": [names[j] for j in crit],
            "gap": {names[j]: gap[:, j].tolist() for j in range(len(names))},
            "layer_gap": {names[j]: float(gap[:, j].max()) for j in range(len(names))},
            "per_class": per_class, "tau": tau, "cut": cut, "calibrate": calibrate, "class_test": class_test,
            "outlier_z": outlier_z,
            "examined_classes": [int(c) for c in classes if per_class[str(int(c))]["examined"]]}
    return scores, flagged, s_s, info


@register_detector("critical_layer", stage="classifier")
def critical_layer(
    model,
    dataset,
    benign,
    *,
    tau: float = 2.5,
    n_critical: int = 2,
    layers: Sequence[str] | None = None,
    candidates: Sequence[str] | None = None,
    class_test: str = "outlier",
    outlier_z: float = 3.0,
    calibrate: str = "classes",
    batch_size: int = 256,
    accelerator=None,
    image_size: int | None = None,
    progress: bool = False,
) -> DetectionResult:
    """Score ``dataset`` against the trusted ``benign`` images (an indexed dataset with correct labels).

    ``candidates`` are the layers searched (default: every backbone stage and the logits); ``layers``
    fixes the critical layers; ``n_critical`` is how many are kept otherwise. ``class_test="outlier"``
    (default) keeps the flags of the classes whose flag rate and mean score stand out among the classes'
    by ``outlier_z``; ``"none"`` keeps every class's (the paper). ``calibrate="classes"`` (default) moves
    the per-image cut up to the clean classes' tail; ``"benign"`` keeps ``tau``. See the module docstring.
    """
    from sslguard.models.classifier import layer_features

    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    t0 = time.perf_counter()
    names = list(candidates) if candidates is not None else list(model.stage_names) + ["logits"]
    kw = dict(batch_size=batch_size, accelerator=accelerator, image_size=image_size, progress=progress)
    _, fs = layer_features(model, dataset, names, **kw)
    _, fb = layer_features(model, benign, names, **kw)
    t1 = time.perf_counter()
    scores, flagged, weighted, info = critical_layer_scores(fs, dataset.labels, fb, benign.labels, tau=tau,
                                                            n_critical=n_critical, layers=layers,
                                                            class_test=class_test, outlier_z=outlier_z,
                                                            calibrate=calibrate)
    info.update(seconds_features=t1 - t0, seconds_analysis=time.perf_counter() - t1, n_benign=int(len(benign)))
    return DetectionResult("critical_layer", np.asarray(dataset.keys), scores, flagged, float(tau),
                           {"weighted_similarity": weighted, "label": np.asarray(dataset.labels)}, info)
