"""Is a detector's flag set plausible? The check behind the run's warnings and the fusion vote.

A detector that flags a fifth of a corpus, or images in most classes when a backdoor is all-to-one
(its poisons carry one label), has almost surely gone wrong: on a held-out MNIST case with a shifted
trusted set, activation and heatmap clustering flagged 2,396 and 2,944 of 8,000 images in 7 of 10
classes, and the fused flags removed 49% of the corpus at precision 0.20 without a word. Such a flag
set is named first in the CLI's and the report's notices, and it does not vote in the fused flags (its
scores still enter the fused ranking, as those of every detector that flagged something).

A flag set can also be small and still wrong: a detector that picks a clean class's cluster under a
shifted trusted set flags a few percent of the corpus, under both rules above. Detectors of one stage hunt
the same poisons with independent mechanisms, so a poison is flagged by more than one of them;
:func:`uncorroborated_flags` names a detector most of whose flags no other detector of its stage shares
(where another one flagged anything), and the fused flags (``agree``) keep only images two detectors
share. Measured on ``benchmarks/classifier_generalization.md``.

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
        hit = flagged_classes(flagged & known, labels, min_class_fraction)
        if len(classes) >= 3 and len(hit) > max_class_share * len(classes):
            return (f"flagged images in {len(hit)} of {len(classes)} classes, where an all-to-one backdoor puts its "
                    f"poisons in one")
    return None


def flagged_classes(flagged: np.ndarray, labels: np.ndarray, min_class_fraction: float = 0.05) -> np.ndarray:
    """The labels that hold at least two and ``min_class_fraction`` of ``flagged`` (a detector's few stray
    flags in a class do not make it a flagged class)."""
    flagged = np.asarray(flagged, dtype=bool)
    hit, counts = np.unique(np.asarray(labels)[flagged], return_counts=True)
    return hit[counts >= max(2, min_class_fraction * int(flagged.sum()))]


def uncorroborated_flags(flags: dict[str, np.ndarray], groups: dict[str, str] | None = None, *,
                         min_flagged: int = 10, min_shared: float = 0.5) -> dict[str, str]:
    """``{detector: why}`` for every detector most of whose flags no other detector of its group shares.

    ``flags``: each detector's boolean flags (aligned). ``groups``: detector -> stage (missing: a group of
    its own, never checked). A detector is named when it flagged at least ``min_flagged`` images, another
    detector of its group flagged anything, and under ``min_shared`` of its flags are flagged by another
    detector of the group. Limits: a detector that alone finds a poison group the others miss is named too
    (the warning says what is uncertain, not that it is wrong); with one detector per group nothing is
    checked.
    """
    by_group: dict[str, list[str]] = {}
    for name, f in flags.items():
        if np.asarray(f).any() and groups is not None and name in groups:
            by_group.setdefault(groups[name], []).append(name)
    out = {}
    for group, names in by_group.items():
        for name in names:
            own = np.asarray(flags[name], dtype=bool)
            if len(names) < 2 or own.sum() < min_flagged:
                continue
            others = np.logical_or.reduce([np.asarray(flags[m], dtype=bool) for m in names if m != name])
            shared = float((own & others).sum() / own.sum())
            if shared < min_shared:
                out[name] = (f"only {shared:.0%} of its {int(own.sum()):,} flags are shared by another {group}-stage "
                             f"detector ({', '.join(m for m in names if m != name)})")
    return out
