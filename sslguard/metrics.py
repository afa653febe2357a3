"""Detection metrics against a poison manifest (scikit-learn for the curve metrics)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score


def detection_metrics(
    scores: np.ndarray,
    flagged: np.ndarray,
    truth: np.ndarray,
    ks: Sequence[int] = (10, 50, 100),
) -> dict[str, float]:
    """Precision, recall, F1 of ``flagged``; AUROC of ``scores``; top-k precision for ``ks`` and for
    k = the true poison count (``topk_true``). All arrays are aligned by position.

    AUROC is ``nan`` when ``truth`` has one class only.
    """
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if not (len(scores) == len(flagged) == len(truth)):
        raise ValueError("scores, flagged and truth must have the same length")
    p, r, f, _ = precision_recall_fscore_support(truth, flagged, average="binary", zero_division=0)
    out: dict[str, float] = {
        "n": int(len(truth)),
        "n_poisoned": int(truth.sum()),
        "n_flagged": int(flagged.sum()),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "tpr": float(r),
        "fpr": float((flagged & ~truth).sum() / max(1, (~truth).sum())),
    }
    finite = np.where(np.isfinite(scores), scores, np.nanmin(scores[np.isfinite(scores)]) if np.isfinite(scores).any() else 0.0)
    out["auroc"] = float(roc_auc_score(truth, finite)) if 0 < truth.sum() < len(truth) else float("nan")
    order = np.argsort(-finite, kind="stable")
    for k in list(ks) + ["true"]:
        kk = int(truth.sum()) if k == "true" else int(k)
        if kk <= 0 or kk > len(truth):
            out[f"top{k}_precision"] = float("nan")
            continue
        out[f"top{k}_precision"] = float(truth[order[:kk]].mean())
    return out
