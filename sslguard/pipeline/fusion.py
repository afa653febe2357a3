"""Fusion: every detector's scores on one scale, combined, and the flags that decide the clean manifest.

``method="rank_mean"`` (default) averages per-detector percentile ranks (scale-free, robust to one
detector's outliers); ``"max_norm"`` takes the maximum of min-max-normalised scores. ``flag``: ``"any"``
(the union), ``"majority"``, ``"all"``, ``"fused"`` (fused score above ``fused_quantile``), or
``"agree"``: within each stage (SSL, classifier), the images flagged by every voting detector of that stage
that flagged anything, and across stages the union. PoisonCAM and PatchSearch hunt the same poisons in the
same encoder and each flags nothing without its own evidence, so an image both flag is a poison, their
stray flags are each other's noise, and where only one found evidence its flags stand; the two stages hunt
different attacks (an SSL trigger, a supervised backdoor), so their flags add up. Detectors with
implausible flag sets (:mod:`sslguard.plausibility`) are named in a warning and do not vote.

Limits of ``"agree"``: when both SSL detectors found evidence but one finds only part of the poisons
(a trigger group confirmed in part), the fused recall is that part's.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np

from sslguard.detectors.base import DetectionResult
from sslguard.plausibility import implausible_flags


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


def _agree(voters: Sequence[Any], groups: dict[str, str] | None, n: int) -> np.ndarray:
    """``flag="agree"``: per group (stage), the intersection of the voters that flagged anything; the union of
    the groups. A detector missing from ``groups`` is a group of its own."""
    by_group: dict[str, list[np.ndarray]] = {}
    for r in voters:
        if r.flagged.any():
            by_group.setdefault((groups or {}).get(r.name, r.name), []).append(np.asarray(r.flagged, bool))
    out = np.zeros(n, dtype=bool)
    for flags in by_group.values():
        out |= np.logical_and.reduce(flags)
    return out


def fuse(results: Sequence[Any], method: str = "rank_mean", flag: str = "any", fused_quantile: float = 0.95,
         no_vote: Sequence[str] = (), groups: dict[str, str] | None = None):
    """Combine aligned detection results into one :class:`DetectionResult` named ``fused``.

    See the module docstring for ``method`` and ``flag``. With one detector the fused flags are that
    detector's flags (for ``any``/``agree``/``majority``/``all``). ``groups`` maps a detector to its stage
    (``flag="agree"``). Detectors named in ``no_vote`` (implausible flag
    sets, :mod:`sslguard.plausibility`) enter the fused score but not the vote.
    """
    if not results:
        raise ValueError("fusion needs at least one detection result")
    index = results[0].index
    for r in results[1:]:
        if not np.array_equal(r.index, index):
            raise ValueError(f"{r.name}: not aligned with {results[0].name}")
    norm = np.stack([normalised_scores(r.scores, method) for r in results])
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
        flagged = _agree(voters, groups, len(index))
    elif flag == "fused":
        threshold = float(np.quantile(fused, fused_quantile))
        flagged = fused > threshold
    else:
        raise ValueError(f"fusion.flag: choose any, agree, majority, all or fused, not {flag!r}")
    return DetectionResult("fused", index, fused, flagged, threshold, {"votes": votes},
                           {"method": method, "flag": flag, "detectors": [r.name for r in results],
                            "voters": [r.name for r in voters]})


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
