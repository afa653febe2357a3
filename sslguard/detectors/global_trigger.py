"""PoisonCAM's step 2 for a global trigger: is what a whole-image eraser (:mod:`sslguard.erasers`) takes from a
cluster's members a trigger that the encoder tied to the cluster?

Two paths, per eraser, each the global analogue of a window check (:mod:`sslguard.detectors.poisoncam`):

- **Residual** (the paste check): the residuals of the cluster's top probes, *added* to non-members, pull at least
  ``paste_rate`` of them into the cluster's group; the residuals of as many random non-members pull at most
  half as many, and the residuals' mean at least half as many (a trigger is one pattern in every poison and
  survives the mean; a cluster of fine textures takes in any image whose detail one member's residual raises).
- **Shared pattern**, for a trigger the encoder learned too weakly for a majority to join (a noise blend on
  CIFAR-10: the *true* trigger moved under half of the non-members into any one of its clusters, while the
  poisons filled those clusters): most of the members' residual energy is one pattern
  (:func:`~sslguard.erasers.shared_share` at least ``min_shared``), the residuals share more than the erased
  copies (the content) do, and that pattern, added to non-members, pulls them in at least twice as often as
  the same energy of other images' detail does, by a one-sided Fisher test at ``PATTERN_P`` (a few arrivals
  are no evidence). Why the content clause: aligned images (digits) share their strokes' edges because they
  share the strokes; a blended trigger is shared by members whose content is not. The measurements:
  ``benchmarks/defaults.md`` (*The shared pattern*).

Limits: the shared share falls with the square of the cluster's poison share and with the blend weight (a
faint blend whose pattern is a minority of the band's energy is missed); a trigger that differs from poison
to poison shares nothing; a watermark that the encoder groups images by passes, as it should (it acts as a
trigger). Both paths see only the band an eraser removes (fine detail, chroma detail).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import fisher_exact

from sslguard.erasers import residuals, shared_share

__all__ = ["PATTERN_P", "confirm_by_residual"]

PATTERN_P = 0.01  # one-sided Fisher p of the shared pattern's pull against its control


def _shared_pattern(run, c: int, j: int, e: str, *, min_shared: float, n_members: int, n_test: int,
                    seed: int) -> dict:
    """The shared-pattern path for cluster ``c`` and eraser ``e``: its statistics, with ``passed``."""
    rng = np.random.default_rng([seed, 4248, j, c])  # a stream of its own: the other checks draw as without it
    mem = run.clusters.members(c)
    imgs = run.corpus.images(np.sort(rng.choice(mem, size=min(n_members, len(mem)), replace=False)))
    res = residuals(imgs, e)
    content = imgs.float() - res
    rec = {"shared": shared_share(res),
           "content_shared": shared_share(content - content.mean(dim=(1, 2, 3), keepdim=True)), "passed": False}
    mean = res.mean(0)
    # under half a grey level everywhere, adding the pattern leaves every uint8 image as it was (grey images' chroma)
    if not (rec["shared"] >= min_shared and rec["shared"] > rec["content_shared"] and float(mean.abs().max()) >= 0.5):
        return rec
    others = np.flatnonzero(~np.isin(run.assign, run.corpus.group(c)))
    if not len(others):  # every cluster is in c's group: nothing to pull in
        return rec
    test = np.sort(rng.choice(others, size=min(n_test, len(others)), replace=False))
    donors = np.sort(rng.choice(others, size=min(len(imgs), len(others)), replace=False))
    control = residuals(run.corpus.images(donors), e).mean(0)
    control = control * (mean.norm() / control.norm().clamp_min(1e-12))  # the same energy, other images' detail
    rate, control_rate = (run.corpus.residual_rate([r], test, c) for r in (mean, control))
    hits = [int(round(r * len(test))) for r in (rate, control_rate)]
    p = float(fisher_exact([[h, len(test) - h] for h in hits], alternative="greater").pvalue)
    rec.update(rate=rate, control_rate=control_rate, p=p, passed=bool(rate >= 2 * control_rate and p <= PATTERN_P))
    return rec


def confirm_by_residual(run, probes, c: int, mine: np.ndarray, *, n_paste_windows: int, n_paste_test: int,
                        paste_rate: float, seed: int, min_shared: float | None) -> tuple[dict, dict]:
    """Both paths for cluster ``c``, every eraser of ``probes``: ``(statistics, passed)`` with ``passed`` mapping
    each eraser that passed to ``(path, rate)``. The residual path takes the top ``n_paste_windows`` probes by
    the eraser's drop (``mine``: the cluster's probes) and ``n_paste_test`` non-members; the shared-pattern path
    (``min_shared`` None: off) ``n_paste_test`` random members and ``n_paste_windows * n_paste_test``
    non-members. Each eraser draws on its own streams (the other clusters' window checks draw as without erasers)."""
    mine_pos = np.flatnonzero(mine)
    others = np.flatnonzero(~np.isin(run.assign, run.corpus.group(c)))
    stats: dict = {"residual_rate": {}, "residual_control_rate": {}, "residual_shared_rate": {}}
    passed: dict = {}
    for j, (e, drop) in enumerate(probes.eraser_drop.items()):
        pick = mine_pos[np.argsort(-drop[mine_pos], kind="stable")[:n_paste_windows]]
        res = residuals(run.corpus.images(probes.pos[pick]), e)  # (n, 3, H, W)
        rng = np.random.default_rng([seed, 4245, j, c])
        test_pos = np.sort(rng.choice(others, size=min(n_paste_test, len(others)), replace=False))
        rate = stats["residual_rate"][e] = run.corpus.residual_rate(list(res), test_pos, c)
        if rate >= paste_rate:
            # a cluster of fine textures takes in any image whose detail is raised (on CIFAR-10 clean clusters'
            # residuals pulled up to 0.42): the cluster's own residuals must pull at least twice as many
            donors = np.sort(rng.choice(others, size=min(len(res), len(others)), replace=False))
            control = run.corpus.residual_rate(list(residuals(run.corpus.images(donors), e)), test_pos, c)
            # what the top probes share: a trigger survives the mean, each image's own detail averages away
            # (a texture cluster at 224 px passed the control: benchmarks/defaults.md, *Whole-image erasers*);
            # the one mean residual meets as many non-members as the residuals did, on a stream of its own
            pos = np.random.default_rng([seed, 4247, j, c]).choice(others, min(len(res) * len(test_pos), len(others)),
                                                                     replace=False)
            shared = run.corpus.residual_rate([res.mean(0)], np.sort(pos), c)
            stats["residual_control_rate"][e], stats["residual_shared_rate"][e] = control, shared
            if control <= rate / 2 and shared >= rate / 2:
                passed[e] = ("residual", rate)
        elif min_shared is not None:
            rec = stats.setdefault("shared_pattern", {})[e] = _shared_pattern(
                run, c, j, e, min_shared=min_shared, n_members=n_paste_test, n_test=n_paste_windows * n_paste_test,
                seed=seed)
            if rec["passed"]:
                passed[e] = ("shared pattern", rec["rate"])
    return stats, passed

