"""Spectral signatures (Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks", NeurIPS).

For every label, the learned representations of the images carrying it are centred and their top
right singular vector ``v`` is found; an image's outlier score is ``((r - mean) . v) ** 2``. Poisons
that the network learned to map to the label leave a strong direction in that class's covariance,
so they score highest. The paper removes the ``1.5 * eps * n_c`` top-scoring images of every class,
where ``eps`` is an upper bound on the fraction of poisons in a class (``expected_rate``).

Scores are comparable across classes: each class's raw scores are divided by that class's removal
cut-off (the smallest removed score), so the removed images are those with ``score >= 1`` (up to
ties at the cut-off) and the threshold is 1. ``evidence["raw_score"]`` keeps the paper's unscaled score.

Limits (the paper's own): the removal budget applies to every class, so with poisons in one class the
precision is at most ``n_poison / (1.5 * eps * N)``; the guarantee needs the poisons to be a minority
of their class (``eps < 0.5``) and a spectral gap between clean and poison means. The representation
is the classifier's penultimate layer (``layer`` picks another one, pooled), not the paper's choice
per architecture.
"""

from __future__ import annotations

import time

import numpy as np

from sslguard.detectors.base import DetectionResult, register_detector


def spectral_scores(features: np.ndarray, labels: np.ndarray, expected_rate: float,
                    multiplier: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(scaled_scores, flagged, raw_scores, per_class)``; see the module docstring."""
    if not 0.0 < expected_rate < 1.0:
        raise ValueError(f"expected_rate must be in (0, 1), got {expected_rate}")
    if multiplier <= 0:
        raise ValueError(f"multiplier must be positive, got {multiplier}")
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    raw = np.zeros(n)
    scaled = np.zeros(n)
    flagged = np.zeros(n, dtype=bool)
    per_class = {}
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        r = features[pos] - features[pos].mean(0, keepdims=True)
        if len(pos) < 2:
            per_class[str(int(c))] = {"n": int(len(pos)), "n_removed": 0}
            continue
        # Only the top singular direction is needed; a full SVD of a class of a few thousand rows is cheap.
        _, s, vt = np.linalg.svd(r, full_matrices=False)
        sc = (r @ vt[0]) ** 2
        k = min(len(pos), int(np.floor(multiplier * expected_rate * len(pos))))
        order = np.argsort(-sc, kind="stable")
        cut = sc[order[k - 1]] if k > 0 else np.inf
        raw[pos] = sc
        scaled[pos] = sc / cut if k > 0 and cut > 0 else 0.0
        sel = np.zeros(len(pos), dtype=bool)
        sel[order[:k]] = True
        flagged[pos] = sel
        per_class[str(int(c))] = {"n": int(len(pos)), "n_removed": int(k), "cutoff": float(cut) if k else None,
                                  "top_singular_value": float(s[0]),
                                  "spectral_gap": float(s[0] / s[1]) if len(s) > 1 and s[1] > 0 else None}
    return scaled, flagged, raw, per_class


@register_detector("spectral")
def spectral(
    model,
    dataset,
    *,
    expected_rate: float = 0.1,
    multiplier: float = 1.5,
    layer: str = "penultimate",
    activations: np.ndarray | None = None,
    batch_size: int = 256,
    accelerator=None,
    image_size: int | None = None,
    progress: bool = False,
) -> DetectionResult:
    """Spectral-signature scores of ``dataset`` under ``model`` (Tran et al. 2018).

    ``expected_rate`` is the paper's ``eps`` (an upper bound on the poison share of a class); the top
    ``multiplier * eps`` of every class is flagged. ``activations`` (``(N, D)``, dataset order) skips
    the forward pass; ``layer`` names a stage (pooled), ``penultimate`` or ``logits``.
    """
    t0 = time.perf_counter()
    if activations is None:
        from sslguard.models.classifier import layer_features

        _, out = layer_features(model, dataset, [layer], batch_size=batch_size, accelerator=accelerator,
                                image_size=image_size, progress=progress)
        activations = out[layer]
    t1 = time.perf_counter()
    scaled, flagged, raw, per_class = spectral_scores(activations, dataset.labels, expected_rate, multiplier)
    info = {"per_class": per_class, "expected_rate": expected_rate, "multiplier": multiplier, "layer": layer,
            "seconds_features": t1 - t0, "seconds_analysis": time.perf_counter() - t1}
    return DetectionResult("spectral", np.asarray(dataset.keys), scaled, flagged, 1.0,
                           {"raw_score": raw, "label": np.asarray(dataset.labels)}, info)
