"""Fusion: every detector's scores on one scale, combined, and the flags that decide the clean manifest.

``method="rank_mean"`` (default) averages per-detector percentile ranks (scale-free, robust to one
detector's outliers); ``"max_norm"`` takes the maximum of min-max-normalised scores. Both combine only the
detectors that flagged something, when at least one did: a detector that found no evidence says so by
flagging nothing, and its ranks are then its pre-decision order, near chance where its mechanism does not
apply (PatchSearch on a blend trigger: AUROC 0.2-0.4, ``benchmarks/generalization.md``), so averaging them in
pulled the fused ranking toward chance while the fused flags were exact. ``flag``: ``"any"``
(the union), ``"majority"``, ``"all"``, ``"fused"`` (fused score above ``fused_quantile``), or
``"agree"``: within each stage (SSL, classifier), among the voting detectors that flagged anything,

1. the images at least two of them flag (*two votes*);
2. the *class vote*: the flags of a detector that flags a class's cluster as a whole (registry
   ``unit="cluster"``: activation and heatmap clustering), in the classes that at least two of them flag;
3. the one detector's flags, when only one flagged anything;

and across stages the union.

Why: the detectors of a stage hunt the same poisons with independent mechanisms, so each one's stray
flags are its own (a cluster of clean images, a per-class budget, a per-image cut's false positives)
while a poison is flagged by most of them. Two votes drop one detector's strays and a class that one
detector flags alone (under a shifted trusted set, the runaway of the MNIST case: 7 of 10 classes);
requiring every detector instead cuts recall to the weakest one's (spectral signatures' budget caps their
recall near 0.3 on a class half poisoned). The class vote gives back what two votes lose when one
clustering detector finds the whole poison cluster and the others only parts of it: its decision is
per cluster, tested against the trusted images, so inside a class a second detector confirmed it holds
no per-image strays to drop. On ``benchmarks/classifier_generalization.md`` this rule met precision
>= 0.8 at recall >= 0.9 in more learned cases than the union, two votes alone, or the every-detector
intersection, with iid and with shifted trusted sets. PoisonCAM and PatchSearch decide per image, so
for the SSL stage ``agree`` is their intersection where both found evidence (on the grid12 case of
``benchmarks/generalization.md`` the union had F1 0.85, the intersection 0.999). The two stages hunt
different attacks (an SSL trigger, a supervised backdoor), so their flags add up. Detectors with
implausible flag sets (:mod:`sslguard.plausibility`) are named in a warning and do not vote.

Limits of ``"agree"``: when one per-image detector alone finds part of the poisons (PoisonCAM confirms a
trigger group in part while PatchSearch finds it all; critical layer adds poisons no clustering detector
found), the fused recall is the part two detectors share. A clustering detector whose cluster mixes
poisons with clean images of the same class passes its clean ones on (activation clustering on MNIST
with other writers' trusted images: precision 0.74). A lone detector's flags stand when it is the only
one of its stage that flagged anything. Without labels there is no class vote.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np

from sslguard.detectors.base import DetectionResult
from sslguard.plausibility import flagged_classes, implausible_flags


def normalised_scores(scores: np.ndarray, method: str) -> np.ndarray:
    """Scores on [0, 1]: percentile ranks (``rank_mean``) or min-max (``max_norm``); non-finite -> 0."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    out = np.zeros(len(s))
    if not ok.any():
        return out
    if method == "rank_mean":
        # Non-finite scores (images a detector did not examine) rank below every finite one.
        filled = np.where(ok, s, np.min(s[ok]) - 1.0)
        return (rankdata(filled, method="average") - 1.0) / max(1, len(s) - 1)
    lo, hi = float(s[ok].min()), float(s[ok].max())
    out[ok] = (s[ok] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _agree(voters: Sequence[Any], groups: dict[str, str] | None, n: int, labels: np.ndarray | None = None,
           by_cluster: Sequence[str] = ()) -> np.ndarray:
    """``flag="agree"``: per group (stage), the images at least two of the voters that flagged anything flag,
    plus the flags of the voters named in ``by_cluster`` in the classes (``labels``) that at least two voters
    flag (:func:`sslguard.plausibility.flagged_classes`); the one voter's flags when only one flagged
    anything; the union of the groups. A detector missing from ``groups`` is a group of its own."""
    by_group: dict[str, list[Any]] = {}
    for r in voters:
        if r.flagged.any():
            by_group.setdefault((groups or {}).get(r.name, r.name), []).append(r)
    out = np.zeros(n, dtype=bool)
    for rs in by_group.values():
        flags = np.stack([np.asarray(r.flagged, bool) for r in rs])
        out |= flags.sum(0) >= min(2, len(rs))
        whole = [r for r in rs if r.name in set(by_cluster)]
        if len(rs) >= 2 and whole and labels is not None:
            counts: dict[Any, int] = {}
            for r in rs:
                for c in flagged_classes(r.flagged, labels):
                    counts[c] = counts.get(c, 0) + 1
            agreed = np.isin(labels, [c for c, k in counts.items() if k >= 2])
            out |= np.logical_or.reduce([np.asarray(r.flagged, bool) for r in whole]) & agreed
    return out


def stage_roles(names: Sequence[str]) -> dict[str, Any]:
    """``fuse``'s ``groups`` and ``by_cluster`` for registered detectors ``names``, read from the registry
    (each detector's stage and unit), so every caller builds ``agree``'s inputs the same way."""
    from sslguard.detectors import detector_spec

    specs = {n: detector_spec(n) for n in names}
    return {"groups": {n: s.stage for n, s in specs.items()},
            "by_cluster": [n for n, s in specs.items() if s.unit == "cluster"]}


def fuse(results: Sequence[Any], method: str = "rank_mean", flag: str = "any", fused_quantile: float = 0.95,
         no_vote: Sequence[str] = (), groups: dict[str, str] | None = None, labels: np.ndarray | None = None,
         by_cluster: Sequence[str] = ()):
    """Combine aligned detection results into one :class:`DetectionResult` named ``fused``.

    See the module docstring for ``method`` and ``flag``. With one detector the fused flags are that
    detector's flags (for ``any``/``agree``/``majority``/``all``). ``groups`` maps a detector to its stage
    (``flag="agree"``); ``labels`` (the corpus' labels) and ``by_cluster`` (detectors that flag a class's
    cluster as a whole: registry ``unit="cluster"``) give ``agree`` its class vote. Detectors named in
    ``no_vote`` (implausible flag sets, :mod:`sslguard.plausibility`) enter the fused score but not the vote.
    ``info["ranked"]`` names the detectors in the fused score: those that flagged anything, else all.
    """
    if not results:
        raise ValueError("fusion needs at least one detection result")
    index = results[0].index
    for r in results[1:]:
        if not np.array_equal(r.index, index):
            raise ValueError(f"{r.name}: not aligned with {results[0].name}")
    # the ranking: detectors that flagged anything (voting or not), else all of them (module docstring)
    ranked = [r for r in results if np.asarray(r.flagged).any()] or list(results)
    norm = np.stack([normalised_scores(r.scores, method) for r in ranked])
    fused = norm.mean(0) if method == "rank_mean" else norm.max(0)
    voters = [r for r in results if r.name not in set(no_vote)]
    votes = np.stack([r.flagged for r in voters]).sum(0) if voters else np.zeros(len(index), dtype=np.int64)
    threshold = float("nan")
    if flag == "any":
        flagged = votes >= 1
    elif flag == "all":
        flagged = votes == len(voters) if voters else np.zeros(len(index), dtype=bool)
    elif flag == "majority":
        flagged = votes * 2 > len(voters)
    elif flag == "agree":
        flagged = _agree(voters, groups, len(index), None if labels is None else np.asarray(labels), by_cluster)
    elif flag == "fused":
        threshold = float(np.quantile(fused, fused_quantile))
        flagged = fused > threshold
    else:
        raise ValueError(f"fusion.flag: choose any, agree, majority, all or fused, not {flag!r}")
    return DetectionResult("fused", index, fused, flagged, threshold, {"votes": votes},
                           {"method": method, "flag": flag, "detectors": [r.name for r in results],
                            "voters": [r.name for r in voters], "ranked": [r.name for r in ranked]})


# ----------------------------------------------------------------------------------------- pipeline


def implausible_detectors(detections: dict[str, Any], labels: np.ndarray | None, voting: Sequence[str],
                          max_share: float | None, max_class_share: float | None) -> list[tuple[str, str, bool]]:
    """``(name, warning, votes)`` for every detector whose flags are implausible; ``votes`` says whether it
    was among ``voting`` (and is therefore taken out of the vote)."""
    out = []
    for name, r in detections.items():
        why = implausible_flags(r.flagged, labels, max_share=max_share, max_class_share=max_class_share)
        if why is None:
            continue
        role = "it does not vote in the fused flags" if name in voting else "it is not in the fused flags"
        out.append((name, f"implausible flags from {name}: {why}; {role} (fusion.max_share / "
                          f"fusion.max_class_share)", name in voting))
    return out


def scores_csv(keys: np.ndarray, paths: list[str], labels: np.ndarray, detections: dict[str, Any], fused,
               truth: np.ndarray | None) -> str:
    """``scores.csv``: index, path, label, one column per detector, fused, flagged [, poisoned]."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = list(detections)
    w.writerow(["index", "path", "label", *cols, "fused", "flagged"] + (["poisoned"] if truth is not None else []))
    for i, k in enumerate(keys.tolist()):
        row = [k, paths[i], int(labels[i]), *(repr(float(detections[n].scores[i])) for n in cols),
               repr(float(fused.scores[i])), int(fused.flagged[i])]
        if truth is not None:
            row.append(int(truth[i]))
        w.writerow(row)
    return buf.getvalue()
