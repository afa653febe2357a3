"""Detection metrics against a poison manifest (scikit-learn for the curve metrics)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score, roc_curve

# One metric set everywhere (benchmarks, reports, tests), so a claim such as "96% vs 3%" can be checked
# either way: ranking quality at every depth, and the detector's own flags.
TOP_KS = (5, 10, 20, 50, 100, 500)


def detection_metrics(
    scores: np.ndarray,
    flagged: np.ndarray,
    truth: np.ndarray,
    ks: Sequence[int] = TOP_KS,
) -> dict[str, float]:
    """Precision, recall, F1 of ``flagged``; AUROC, AUPRC (average precision) and the TPR at 1% FPR of
    ``scores``; top-k precision for ``ks`` and for k = the true poison count (``toptrue_precision``).
    All arrays are aligned by position.

    The curve metrics are ``nan`` when ``truth`` has one class only; a top-k precision is ``nan`` when
    k exceeds the corpus.
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
    both = 0 < truth.sum() < len(truth)
    out["auroc"] = float(roc_auc_score(truth, finite)) if both else float("nan")
    out["auprc"] = float(average_precision_score(truth, finite)) if both else float("nan")
    if both:
        fpr, tpr, _ = roc_curve(truth, finite)
        out["tpr_at_1pct_fpr"] = float(tpr[fpr <= 0.01].max())  # roc_curve starts at (0, 0)
    else:
        out["tpr_at_1pct_fpr"] = float("nan")
    order = np.argsort(-finite, kind="stable")
    for k in list(ks) + ["true"]:
        kk = int(truth.sum()) if k == "true" else int(k)
        if kk <= 0 or kk > len(truth):
            out[f"top{k}_precision"] = float("nan")
            continue
        out[f"top{k}_precision"] = float(truth[order[:kk]].mean())
    return out
