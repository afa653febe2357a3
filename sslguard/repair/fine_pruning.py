"""Fine-pruning with the l-infinity ranking: prune the last stage's channels, then fine-tune on clean images
(Liu, Dolan-Gavitt & Garg 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID; the ranking is :func:`sslguard.repair.linf_pruning.linf_pruning`'s, Xu et al. 2021).

Why: pruning alone must stop where clean accuracy falls 3 points, and where the channels the trigger
excites also carry the target class that is before the backdoor is gone (none of the four models of
``benchmarks/classifier_generalization.md`` reached an 80% ASR drop). A short clean fine-tune after
pruning gives the accuracy back, so the stopping rule can prune further. The rule needs no trigger:

1. rank the channels once (``linf_pruning``'s ``order``, with ``suspect`` when given);
2. for each fraction of ``fractions``, mask that share of the ranking and fine-tune the masked copy on
   ``clean`` (:func:`sslguard.repair.finetune.finetune`, every layer; masked channels stay 0, the mask is
   a buffer);
3. keep the largest fraction whose fine-tuned clean accuracy on ``val`` stays within ``max_acc_drop`` of
   the unpruned model's (no fraction qualifies: the unpruned model).

The ASR (with ``attack``) is measured before and after fine-tuning for the report; it plays no part in
the choice.

Limits: fine-tuning on clean images can bring part of a backdoor back through the channels left (on an
MNIST model, pruning 30% took the ASR to 0 and five epochs of fine-tuning brought it back to 0.49), so
the rule relies on pruning far enough that the trigger's channels are gone; the largest fraction that
fine-tuning repairs is that point only when the clean images suffice to rebuild the classes from what is
left (a few hundred trusted images did on the matrix' models; fewer may not). Each fraction costs one
fine-tune: ``len(fractions) * epochs`` passes over ``clean``. ``val`` must be clean and labelled, and the
choice is read off the same ``val`` accuracy the curve reports.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from sslguard.repair.finetune import finetune
from sslguard.repair.linf_pruning import existing_mask, linf_pruning


@dataclass
class FinePruningResult:
    """The fine-pruned model and how it was chosen; curves are aligned with ``fractions`` (0 first)."""

    model: Any
    fractions: np.ndarray
    n_pruned: np.ndarray
    clean_acc_pruned: np.ndarray  # after pruning, before fine-tuning
    asr_pruned: np.ndarray
    clean_acc: np.ndarray  # after fine-tuning (the unpruned model's own at fraction 0)
    asr: np.ndarray
    chosen: int
    info: dict[str, Any] = field(default_factory=dict)
    name: str = "fine_pruning"

    @property
    def chosen_fraction(self) -> float:
        return float(self.fractions[self.chosen])


def fine_pruning(
    model,
    clean,
    *,
    val,
    suspect=None,
    attack=None,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    max_acc_drop: float = 0.03,
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 64,
    order: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> FinePruningResult:
    """Prune ``model``'s last-stage channels by the l-infinity ranking and fine-tune on ``clean`` (module doc).

    ``clean``: trusted clean labelled images (ranking reference and fine-tuning set); ``val``: clean labelled
    images for the accuracy the rule reads; ``suspect``: images that may carry the trigger (ranking, labels
    unused); ``attack``: only for the ASR columns. ``model`` is not modified.
    """
    fr = np.asarray([0.0, *sorted(float(f) for f in fractions if f > 0)], dtype=np.float64)
    if len(fr) < 2 or fr[-1] >= 1.0:
        raise ValueError(f"fractions must hold values in (0, 1), got {list(fractions)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    t0 = time.perf_counter()
    ranked = linf_pruning(model, clean, val=val, suspect=suspect, attack=attack, fractions=fr, max_acc_drop=1.0,
                          order=order, seed=seed, progress=progress)
    acc, asr = ranked.clean_acc.copy(), ranked.asr.copy()
    models = [model]
    for i in range(1, len(fr)):
        mask = existing_mask(model)
        mask[ranked.ranking[: ranked.n_pruned[i]]] = 0.0
        pruned = copy.deepcopy(model)
        pruned.prune_channels(torch.as_tensor(mask))
        ft = finetune(pruned, clean, val, attack, fraction=1.0, epochs=epochs, lr=lr, batch_size=batch_size,
                      seed=seed, copy_model=False, progress=progress)
        acc[i], asr[i] = float(ft.clean_acc[-1]), float(ft.asr[-1])
        models.append(ft.model.eval())
    ok = np.flatnonzero(acc >= acc[0] - max_acc_drop)
    chosen = int(ok.max())
    info = {"order": ranked.info["order"], "epochs": epochs, "lr": lr, "max_acc_drop": max_acc_drop,
            "n_clean": int(len(clean)), "n_val": int(len(val)), "clean_acc_before": float(acc[0]),
            "clean_acc_after": float(acc[chosen]), "asr_before": float(asr[0]), "asr_after": float(asr[chosen]),
            "seconds": time.perf_counter() - t0}
    return FinePruningResult(models[chosen], fr, ranked.n_pruned, ranked.clean_acc, ranked.asr, acc, asr, chosen,
                             info)
