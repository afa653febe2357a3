"""Spectral signatures (Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks", NeurIPS).

For every label, the learned representations of the images carrying it are centred and their top
right singular vector ``v`` is found; an image's outlier score is ``((r - mean) . v) ** 2``. Poisons
that the network learned to map to the label leave a strong direction in that class's covariance,
so they score highest. The paper removes the ``multiplier * eps * n_c`` top-scoring images of every
class (``multiplier=1.5``, the paper's), where ``eps`` is an upper bound on the fraction of poisons in
a class (``expected_rate``).

Which classes are filtered (``class_test``):

- ``"none"``: every class, the paper's rule. With poisons in one class, the budget removes
  ``multiplier * eps`` of every clean class too, so precision is at most
  ``n_poison / (multiplier * eps * N)``;
- ``"outlier"`` (default; this package's addition): only classes whose spectral signature stands out,
  at least ``outlier_z`` robust standard deviations (1.4826 * MAD) above the median over classes — the
  same robust outlier test as activation clustering's default decision. It assumes a minority of
  classes is poisoned (all-to-one attacks); use ``"none"`` otherwise. The statistic follows the
  paper's own argument: an ``eps`` share of poisons whose mean is ``d`` away from the clean mean adds
  ``eps (1 - eps) d d^T`` to the class covariance and moves the class mean by ``eps d``, along the
  top singular direction ``v``. Without a reference it is the share of the class's variance along
  ``v``, ``s_1^2 / sum_i s_i^2``. With ``reference`` (a few trusted clean images per class, as the
  critical-layer detector uses) it is the shift itself: ``|(mean_class - mean_ref) . v|`` over the
  standard deviation of the reference images' projections on ``v``.

Centring: the paper centres at the class mean, which stands for the clean mean when ``eps`` is small.
With ``reference``, each class is centred at its reference mean instead, so the score is the squared
distance along ``v`` from where clean images of the class lie. This removes the symmetry below: at a
50% share the class mean sits between the groups, the reference mean sits in the clean one.

Scores rank all images on one scale: ``score = [class filtered] + s / (s + cut)``, where ``s`` is the
paper's score and ``cut`` the smallest of the ``multiplier * eps * n_c`` largest scores of the class
(the removal cut-off), so ``s / (s + cut)`` is 0.5 at the cut-off. Flags are the paper's removals in
the filtered classes (score >= 1.5 up to ties at the cut-off); the threshold is 1.5.
``evidence["raw_score"]`` keeps the unscaled score.

Defaults (the measurements behind each: ``benchmarks/defaults.md#spectral``):

- ``expected_rate=0.1``, ``multiplier=1.5``: the paper's ``eps`` bound and removal budget.
  Evidence: benchmarks/defaults.md#spectral (budget).
- ``class_test="outlier"``, ``outlier_z=3.0``, with the reference shift whenever a reference is given:
  the variance share alone separates the target class only at some seeds.
  Evidence: benchmarks/defaults.md#spectral (class test).

Limits (the paper's own): the guarantee needs the poisons to be a minority of their class
(``eps < 0.5``) and a spectral gap between clean and poison means. Near a 50% poison share the
centred score is symmetric — the class mean lies between the two groups and both score alike — so
a filtered class loses about ``multiplier * eps`` of its images whichever side the poisons are on; the
class test stops the loss in the clean classes, not in the poisoned one. Without a reference the class
test reads the variance share, which is weak on small models: on the planted classifier case
(:func:`sslguard.testing.planted_badnets_classifier_case`) whether the target class passed the cut of
3 depended on the seed and on the CPU's float order, while with the trusted test split as reference
it stood far above every clean class (benchmarks/defaults.md#spectral). Pass a reference whenever one
exists (the pipeline passes its labelled test split). *Shift tolerated*: the reference class test
compares each class's shift with the other classes', so a trusted set from another population that
moves every class alike (MNIST's other writers) leaves the clean classes unfiltered; a shift that moves
one clean class's trusted images more than the others' (darkened or brightened digits, in some runs)
can filter that class, which then loses its ``multiplier * eps`` budget but no more (the removals never
exceed the budget, so no class is flagged wholesale); per-shift numbers in
benchmarks/classifier_shift.md. The representation is the classifier's
penultimate layer (``layer`` picks another one, pooled), not the paper's choice per architecture.
"""

from __future__ import annotations

import time

import numpy as np

from sslguard.detectors.base import DetectionResult, register_detector, robust_z

CLASS_TESTS = ("outlier", "none")


def _class_signature(x: np.ndarray, ref: np.ndarray, expected_rate: float, multiplier: float):
    """One class's spectral scores: ``(scores, s / (s + cut), removed mask, per-class record)``."""
    mean = x.mean(0, keepdims=True)
    r = x - mean
    # Only the top singular direction is needed; the SVD of a (n_c, D) class with D in the
    # hundreds is cheap (the D x D Gram matrix would square the condition number).
    _, s, vt = np.linalg.svd(r, full_matrices=False)
    v = vt[0]
    shift_z = None
    if len(ref) >= 2:
        ref_mean = ref.mean(0, keepdims=True)
        sc = ((x - ref_mean) @ v) ** 2
        ref_sd = float(((ref - ref_mean) @ v).std(ddof=1))
        shift_z = float(abs(((mean - ref_mean) @ v).item()) / max(ref_sd, 1e-12))
    else:
        sc = (r @ v) ** 2
    k = min(len(x), int(np.floor(multiplier * expected_rate * len(x))))
    order = np.argsort(-sc, kind="stable")
    cut = sc[order[k - 1]] if k > 0 else np.inf
    rel = sc / (sc + cut) if k > 0 and cut > 0 else 0.0
    sel = np.zeros(len(x), dtype=bool)
    sel[order[:k]] = True
    var = float((s ** 2).sum())
    record = {"n": int(len(x)), "n_removed": int(k), "cutoff": float(cut) if k else None,
              "top_singular_value": float(s[0]),
              "top_variance_share": float(s[0] ** 2 / var) if var > 0 else 0.0,
              "spectral_gap": float(s[0] / s[1]) if len(s) > 1 and s[1] > 0 else None,
              "reference_shift": shift_z, "n_reference": int(len(ref))}
    return sc, rel, sel, record


def _filtered_classes(per_class: dict, labels: np.ndarray, class_test: str, outlier_z: float) -> np.ndarray:
    """The class test: which classes' removals count (records ``filtered`` per class); per image."""
    analysed = [k for k, v in per_class.items() if "top_variance_share" in v]
    # The reference shift when every analysed class has a reference, else the variance share.
    stat = "reference_shift" if analysed and all(per_class[k]["reference_shift"] is not None for k in analysed) \
        else "top_variance_share"
    vals = np.array([per_class[k][stat] for k in analysed])
    if class_test == "outlier" and len(vals) >= 3:
        z = robust_z(vals, floor=1e-6)
        filtered = {k: z_k >= outlier_z for k, z_k in zip(analysed, z)}
        for k, z_k in zip(analysed, z):
            per_class[k]["class_statistic"] = stat
            per_class[k]["class_z"] = float(z_k)
    else:  # the paper's rule (also the only option with fewer than three classes to compare)
        filtered = {k: True for k in analysed}
    is_filtered = np.zeros(len(labels), dtype=bool)
    for k in per_class:
        per_class[k]["filtered"] = bool(filtered.get(k, False))
        if per_class[k]["filtered"]:
            is_filtered[labels == int(k)] = True
    return is_filtered


def spectral_scores(features: np.ndarray, labels: np.ndarray, expected_rate: float, multiplier: float = 1.5,
                    *, class_test: str = "outlier", outlier_z: float = 3.0, reference: np.ndarray | None = None,
                    reference_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(scores, flagged, raw_scores, per_class)``; see the module docstring. ``reference`` /
    ``reference_labels``: trusted clean feature rows (same space as ``features``)."""
    if not 0.0 < expected_rate < 1.0:
        raise ValueError(f"expected_rate must be in (0, 1), got {expected_rate}")
    if multiplier <= 0:
        raise ValueError(f"multiplier must be positive, got {multiplier}")
    if class_test not in CLASS_TESTS:
        raise ValueError(f"class_test must be one of {CLASS_TESTS}, got {class_test!r}")
    if (reference is None) != (reference_labels is None):
        raise ValueError("reference and reference_labels go together")
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        reference_labels = np.asarray(reference_labels)
    n = len(labels)
    raw = np.zeros(n)
    rel = np.zeros(n)  # s / (s + cut) within the class
    removed = np.zeros(n, dtype=bool)
    per_class = {}
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        if len(pos) < 2:
            per_class[str(int(c))] = {"n": int(len(pos)), "n_removed": 0}
            continue
        ref = reference[reference_labels == c] if reference is not None else np.zeros((0, features.shape[1]))
        raw[pos], rel[pos], removed[pos], per_class[str(int(c))] = _class_signature(
            features[pos], ref, expected_rate, multiplier)
    is_filtered = _filtered_classes(per_class, labels, class_test, outlier_z)
    scores = is_filtered.astype(np.float64) + rel
    flagged = removed & is_filtered
    return scores, flagged, raw, per_class


@register_detector("spectral", stage="classifier")
def spectral(
    model,
    dataset,
    *,
    expected_rate: float = 0.1,
    multiplier: float = 1.5,
    class_test: str = "outlier",
    outlier_z: float = 3.0,
    reference=None,
    reference_activations: np.ndarray | None = None,
    layer: str = "penultimate",
    activations: np.ndarray | None = None,
    batch_size: int = 256,
    accelerator=None,
    image_size: int | None = None,
    progress: bool = False,
) -> DetectionResult:
    """Spectral-signature scores of ``dataset`` under ``model`` (Tran et al. 2018).

    ``expected_rate`` is the paper's ``eps`` (an upper bound on the poison share of a class); the top
    ``multiplier * eps`` of every filtered class is flagged. ``class_test="none"`` filters every class
    (the paper); ``"outlier"`` only classes whose top direction stands out (module docstring).
    ``reference``: a small labelled set of trusted clean images (``reference_activations`` skips its
    forward pass) for the reference centring and class test. ``activations`` (``(N, D)``, dataset
    order) skips the forward pass; ``layer`` names a stage (pooled), ``penultimate`` or ``logits``.
    """
    t0 = time.perf_counter()
    if activations is None:
        from sslguard.models.classifier import layer_features

        _, out = layer_features(model, dataset, [layer], batch_size=batch_size, accelerator=accelerator,
                                image_size=image_size, progress=progress)
        activations = out[layer]
    ref_labels = None
    if reference is not None:
        ref_labels = np.asarray(reference.labels)
        if reference_activations is None:
            from sslguard.models.classifier import layer_features

            _, out = layer_features(model, reference, [layer], batch_size=batch_size, accelerator=accelerator,
                                    image_size=image_size, progress=progress)
            reference_activations = out[layer]
    t1 = time.perf_counter()
    scores, flagged, raw, per_class = spectral_scores(
        activations, dataset.labels, expected_rate, multiplier, class_test=class_test, outlier_z=outlier_z,
        reference=reference_activations if reference is not None else None, reference_labels=ref_labels)
    info = {"per_class": per_class, "expected_rate": expected_rate, "multiplier": multiplier, "layer": layer,
            "class_test": class_test, "outlier_z": outlier_z, "reference": reference is not None,
            "filtered_classes": [int(k) for k, v in per_class.items() if v.get("filtered")],
            "seconds_features": t1 - t0, "seconds_analysis": time.perf_counter() - t1}
    return DetectionResult("spectral", np.asarray(dataset.keys), scores, flagged, 1.5,
                           {"raw_score": raw, "label": np.asarray(dataset.labels)}, info)
