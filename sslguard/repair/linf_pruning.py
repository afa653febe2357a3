"""l-infinity neuron pruning (Cheng, Xu, Liu, Chen, Zhao & Lin, "Defending against Backdoor Attack on Deep
Neural Networks", arXiv:2002.12162; cited in this project as Xu et al. 2021).

The paper finds that a backdoor biases the neurons of the last convolutional layer most visibly in the
l-infinity norm of their activation maps (a few neurons respond very strongly to the trigger and
stay quiet otherwise), and repairs the model by pruning neurons ranked by that norm. This repairs a
model rather than filtering data, so it returns a :class:`PruningResult` (the pruned model, the
ranking, the curves), not a :class:`~sslguard.detectors.base.DetectionResult`.

The paper ranks the neurons by the l-infinity norm of their activation maps on inputs that carry a
trigger (a trigger reverse-engineered from the model, since the defender does not know the real one)
and prunes the most excited first. This implementation takes its triggered inputs from the data a
defender of a poisoned training set already holds: that training set itself (unlabelled use only).

What is implemented:

1. for every channel of the backbone's last stage, the l-infinity norm of its activation map on each
   image of ``clean`` (trusted clean images) and, when given, of ``suspect`` (images that may carry
   the trigger, typically the whole possibly poisoned training set);
2. ranking (``order``):

   - ``"suspect"`` (default when ``suspect`` is given): descending by the ratio of the ``quantile``
     (0.99) of the channel's l-infinity norm on ``suspect`` to the same quantile on ``clean``. A
     backdoor neuron's norm is extreme on the poisoned share of the suspect set and ordinary on clean
     images; the poisoned share is small (10% of a training set), so its trace is in the upper tail
     of the suspect distribution and not in its mean (ranking by the mean was measurably worse on the
     CIFAR-10 benchmark); dividing by the clean quantile puts channels of different scales on one
     footing. This stands in for the paper's ranking on synthetic-trigger images;
   - ``"ascending"`` (default without ``suspect``): the mean norm on ``clean``, quietest first — a
     backdoor neuron is dormant on clean inputs (the fine-pruning heuristic of Liu et al. 2018, with
     the l-infinity norm in place of the mean activation);
   - ``"descending"``: the mean norm on ``clean``, largest first (the paper's order, but on clean
     images, which do not excite backdoor neurons: reported as a control);

3. channels are masked (set to 0 after the last stage) for each pruning fraction in ``fractions``;
   clean accuracy on ``val`` and, when an ``attack`` is given, the attack success rate are recorded;
4. the chosen point is the largest fraction whose clean accuracy stays within ``max_acc_drop`` of the
   unpruned model's. The choice uses clean accuracy only (a defender does not know the trigger);
   the ASR curve is reported for evaluation.

Because the mask sits between the last stage and a linear head behind a (linear) average pool, every
point of the curve is computed from one pass of pooled features (``W (pool(f) * mask) + b``), not one
forward pass per fraction.

Limits: ``order="suspect"`` needs images among ``suspect`` that excite the backdoor neurons; poisons
that carry only a weak form of the trigger (the reduced-amplitude stickers of the label-consistent
attack) leave a faint tail, and the quantile must lie above one minus the poisoned share of
``suspect``. A narrow network spreads the backdoor over many channels, so pruning it costs more clean
accuracy (fine-pruning, Liu et al. 2018, studies wider nets). Where the channels the trigger excites
also carry the target class, pruning them costs that class, and the stopping rule stops before the
backdoor is gone: on none of the four models of ``benchmarks/classifier_generalization.md`` did it reach
an 80% ASR drop within 3 points. :mod:`sslguard.repair.fine_pruning` fine-tunes after pruning and
so can prune further. Only the last stage's output channels
are candidates (after the residual sum in a ResNet, i.e. a block's output, not its inner
convolution); pruning is not followed by fine-tuning; ``val`` must be clean and labelled, and the
chosen point is read off the same ``val`` accuracy the curve reports. The ASR curve needs the
attack's test-time trigger.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sslguard.data.transforms import to_float
from sslguard.embed import extract
from sslguard.models.classifier import ChannelMask
from sslguard.train.classifier import TriggeredDataset
from sslguard.utils.io import atomic_write_json


ORDERS = ("auto", "suspect", "ascending", "descending")


@dataclass
class PruningResult:
    """The pruned model and how it was chosen. Curves are aligned with ``fractions``."""

    model: Any
    ranking: np.ndarray  # channel ids in pruning order
    linf: np.ndarray  # mean l-infinity norm per channel on the clean images
    fractions: np.ndarray
    n_pruned: np.ndarray
    clean_acc: np.ndarray
    asr: np.ndarray  # nan without an attack
    chosen: int  # position in the curves
    info: dict[str, Any] = field(default_factory=dict)
    rank_key: np.ndarray | None = None  # the ranked quantity (order "suspect": tail ratio; else ``linf``)
    name: str = "linf_pruning"

    @property
    def chosen_fraction(self) -> float:
        return float(self.fractions[self.chosen])

    @property
    def mask(self) -> np.ndarray:
        m = np.ones(len(self.ranking), dtype=np.float32)
        m[self.ranking[: int(self.n_pruned[self.chosen])]] = 0.0
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ranking": self.ranking, "linf": self.linf, "rank_key": self.rank_key,
                "fractions": self.fractions, "n_pruned": self.n_pruned, "clean_acc": self.clean_acc, "asr": self.asr,
                "chosen": int(self.chosen),
                "chosen_fraction": self.chosen_fraction, "info": self.info}

    def to_json(self, path) -> Any:
        return atomic_write_json(path, self.to_dict())


def _last_stage_stats(model, dataset, *, with_linf: bool, batch_size: int, accelerator, image_size, progress):
    """Pooled last-stage features (and per-channel l-infinity norms) of every image, dataset order."""
    def fn(images: torch.Tensor):
        fmap = model.backbone.forward_features(to_float(images))
        out = {"pooled": F.adaptive_avg_pool2d(fmap, 1).flatten(1)}
        if with_linf:
            out["linf"] = fmap.abs().amax(dim=(2, 3))
        return out

    was_training = model.training
    model.eval()
    try:
        _, out = extract(dataset, fn, batch_size=batch_size, image_size=image_size, accelerator=accelerator,
                         desc="last-stage activations", progress=progress)
    finally:
        model.train(was_training)
    return out


def linf_pruning(
    model,
    clean,
    *,
    val=None,
    suspect=None,
    attack=None,
    fractions: Sequence[float] | None = None,
    max_acc_drop: float = 0.03,
    order: str = "auto",
    quantile: float = 0.99,
    batch_size: int = 256,
    accelerator=None,
    image_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PruningResult:
    """Rank the last stage's channels of ``model`` by their l-infinity norms and prune (see module doc).

    ``val``: clean labelled images for the curves (default: ``clean``); ``suspect``: images that may
    carry the trigger (labels unused), for ``order="suspect"`` (``"auto"``: ``"suspect"`` when given,
    else ``"ascending"``); ``attack``: gives the ASR curve (non-target ``val`` images with
    ``attack.apply_test``); it plays no part in the ranking or the choice; ``fractions``: pruning
    fractions to try (default 0, 0.025, ..., 0.975). ``model`` is not modified; ``result.model`` is a
    pruned copy.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "auto":
        order = "suspect" if suspect is not None else "ascending"
    if order == "suspect" and suspect is None:
        raise ValueError('order="suspect" needs the suspect images')
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if not 0.0 <= max_acc_drop <= 1.0:
        raise ValueError(f"max_acc_drop must be in [0, 1], got {max_acc_drop}")
    t0 = time.perf_counter()
    val = clean if val is None else val
    kw = dict(batch_size=batch_size, accelerator=accelerator, image_size=image_size, progress=progress)
    linf_clean = _last_stage_stats(model, clean, with_linf=True, **kw)["linf"].astype(np.float64)
    linf = linf_clean.mean(0)
    n_ch = len(linf)
    if order == "suspect":
        linf_suspect = _last_stage_stats(model, suspect, with_linf=True, **kw)["linf"].astype(np.float64)
        tail_s, tail_c = np.quantile(linf_suspect, quantile, axis=0), np.quantile(linf_clean, quantile, axis=0)
        # A channel silent on both sets (ReLU-dead) gets ratio 0 rather than 0/0.
        key = np.where(tail_c > 0, tail_s / np.maximum(tail_c, 1e-12), np.where(tail_s > 0, np.inf, 0.0))
        ranking = np.argsort(-key, kind="stable")
    else:
        key = linf
        ranking = np.argsort(linf if order == "ascending" else -linf, kind="stable")
    fr = np.asarray(fractions if fractions is not None else np.arange(40) / 40.0, dtype=np.float64)
    if (fr < 0).any() or (fr > 1).any():
        raise ValueError("fractions must lie in [0, 1]")
    fr = np.unique(np.concatenate([[0.0], fr]))  # the unpruned model is the reference point
    n_pruned = np.floor(fr * n_ch + 1e-9).astype(np.int64)
    w = model.head.weight.detach().cpu().double().numpy()
    b = model.head.bias.detach().cpu().double().numpy()
    pooled_val = _last_stage_stats(model, val, with_linf=False, **kw)["pooled"].astype(np.float64)
    labels = np.asarray(val.labels)
    pooled_trig = None
    if attack is not None:
        non_target = np.flatnonzero(labels != attack.target)
        pooled_trig = _last_stage_stats(model, TriggeredDataset(val.subset(non_target), attack, seed=seed),
                                        with_linf=False, **kw)["pooled"].astype(np.float64)
    # The masked channel is pooled before the linear head, so each curve point is a matrix product.
    existing = existing_mask(model)
    acc, asr = np.zeros(len(fr)), np.full(len(fr), np.nan)
    for i, k in enumerate(n_pruned):
        mask = existing.copy()
        mask[ranking[:k]] = 0.0
        acc[i] = float((((pooled_val * mask) @ w.T + b).argmax(1) == labels).mean())
        if pooled_trig is not None:
            asr[i] = float((((pooled_trig * mask) @ w.T + b).argmax(1) == attack.target).mean())
    ok = np.flatnonzero(acc >= acc[0] - max_acc_drop)
    chosen = int(ok.max())
    pruned = copy.deepcopy(model)
    final = existing.copy()
    final[ranking[: n_pruned[chosen]]] = 0.0
    pruned.prune_channels(torch.as_tensor(final))
    pruned.eval()
    info = {"order": order, "quantile": quantile if order == "suspect" else None,
            "n_suspect": int(len(suspect)) if order == "suspect" else 0, "n_channels": int(n_ch),
            "max_acc_drop": max_acc_drop, "n_clean": int(len(clean)),
            "n_val": int(len(val)), "clean_acc_before": float(acc[0]), "clean_acc_after": float(acc[chosen]),
            "asr_before": float(asr[0]), "asr_after": float(asr[chosen]), "seconds": time.perf_counter() - t0}
    return PruningResult(pruned, ranking, linf, fr, n_pruned, acc, asr, chosen, info, rank_key=key)


def existing_mask(model) -> np.ndarray:
    """The channel mask already applied to the last stage (all ones when none)."""
    stage = model.backbone.last_stage
    if isinstance(stage, torch.nn.Sequential) and len(stage) == 2 and isinstance(stage[1], ChannelMask):
        return stage[1].mask.detach().cpu().double().numpy().copy()
    return np.ones(model.feature_dim, dtype=np.float64)
