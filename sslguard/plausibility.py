"""Is a detector's flag set plausible? The check behind the run's warnings and the fusion vote.

A detector that flags a fifth of a corpus, or images in most classes when a backdoor is all-to-one
(its poisons carry one label), has almost surely gone wrong: on a held-out MNIST case with a shifted
trusted set, activation and heatmap clustering flagged 2,396 and 2,944 of 8,000 images in 7 of 10
classes, and the fused flags removed 49% of the corpus at precision 0.20 without a word. Such a flag
set is named first in the CLI's and the report's notices, and it does not vote in the fused flags (its
scores still enter the fused ranking).

Limits: an all-to-all attack (every class relabelled to another) really does put poisons in most
classes, and a corpus that is mostly poisoned really has most of its images flagged; for those set
``fusion.max_class_share`` / ``fusion.max_share`` to ``null``.
"""

from __future__ import annotations

import numpy as np


def implausible_flags(flagged: np.ndarray, labels: np.ndarray | None, *, max_share: float | None = 0.2,
                      max_class_share: float | None = 0.5, min_flagged: int = 10,
                      min_class_fraction: float = 0.05) -> str | None:
    """Why ``flagged`` is implausible, in words, or ``None``.

    ``max_share``: the largest share of the corpus a flag set may hold. ``max_class_share``: the largest
    share of the classes its flags may fall into (labels; unlabelled corpora have no class rule).
    ``min_flagged``: fewer flags than this are never called implausible by the class rule (a handful of
    stray flags spread over classes is noise, not a runaway detector). ``min_class_fraction``: a class
    counts as flagged only when it holds at least this share of the flags (and two of them): a detector of
    precision 0.95 may scatter its few false flags over many classes, while a runaway one puts a real share
    of its flags in each (on a CIFAR-10 case PoisonCAM's 500 poisons came with 12 stray flags in five other
    classes, and the rule without this share silenced it; ``benchmarks/generalization.md``).
    """
    flagged = np.asarray(flagged, dtype=bool)
    n, k = len(flagged), int(flagged.sum())
    if not n or not k:
        return None
    if max_share is not None and k > max_share * n:
        return f"flagged {k:,} of {n:,} images ({k / n:.0%}), more than {max_share:.0%} of the corpus"
    if max_class_share is not None and labels is not None and k >= min_flagged:
        labels = np.asarray(labels)
        known = labels >= 0
        classes = np.unique(labels[known])
        hit_labels, counts = np.unique(labels[flagged & known], return_counts=True)
        hit = hit_labels[counts >= max(2, min_class_fraction * k)]
        if len(classes) >= 3 and len(hit) > max_class_share * len(classes):
            return (f"flagged images in {len(hit)} of {len(classes)} classes, where an all-to-one backdoor puts its "
                    f"poisons in one")
    return None
