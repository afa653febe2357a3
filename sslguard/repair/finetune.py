"""Clean fine-tuning repair (Truong et al. 2020, "Systematic Evaluation of Backdoor Data Poisoning Attacks
on Image Classifiers", CVPR workshops, sec. 5): train a backdoored classifier for a few more epochs on a
small clean set, and watch clean accuracy and attack success rate (ASR) after each epoch.

Truong et al. found that a backdoor inserted by data poisoning is often made ineffective by a few epochs
of such training. :func:`finetune` lets a user check that on their own model: it works on a copy of the
model (so the same backdoored model can also go to :func:`sslguard.repair.linf_pruning` for a side by
side comparison), evaluates it before training (epoch 0) and after every epoch, and returns a
:class:`FinetuneResult` with the repaired model and the curves.

The model is a :class:`~sslguard.models.classifier.Classifier`: a supervised model, or an SSL encoder
plus its linear probe (``Classifier(encoder, num_classes)`` after a linear probe; or pass the encoder
as ``model`` and the probe as ``probe``). ``mode="finetune"`` trains everything (the backbone at
``backbone_lr_scale`` times ``lr``), ``mode="linear"`` only the head (re-fitting a probe on a frozen
encoder cannot move the encoder's trigger feature, which is the point of comparing the two).

Limits: the repair needs labelled clean data the user trusts; if the "clean" set still holds poisons
(a sanitiser's misses), fine-tuning can keep the backdoor alive. Liu, Dolan-Gavitt & Garg 2018
(Fine-Pruning) report cases where fine-tuning alone leaves a backdoor in place, because clean images
rarely activate the neurons the trigger uses, so those get little gradient. On a small clean set the
learning rate decides between keeping the backdoor (too small) and losing clean accuracy (large enough
to move the trigger's weights); the curves are there to show which case a model is in, not to promise
a repair. ASR is measured with the attack's test-time trigger only.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch.nn as nn

from sslguard.data.datasets import IndexedDataset, IndexedSubset
from sslguard.utils.io import atomic_write_json
from sslguard.models.backbones import StagedBackbone
from sslguard.models.classifier import Classifier
from sslguard.sanitize import read_index_list
from sslguard.train.classifier import evaluate_classifier, train_classifier

log = logging.getLogger(__name__)

FINETUNE_MODES = ("finetune", "linear")


@dataclass
class FinetuneResult:
    """Repaired model and its curves: index ``e`` of each array is "after ``e`` epochs" (``e = 0``: before).

    ``loss`` is the mean training loss of each epoch (``nan`` at epoch 0). ``clean_keys`` are the dataset
    indices of the clean images used; ``params`` the settings; ``seconds`` the wall time of training and
    evaluation together.
    """

    model: nn.Module
    epochs: np.ndarray
    clean_acc: np.ndarray
    asr: np.ndarray
    loss: np.ndarray
    clean_keys: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    name: str = "finetune"

    x_label = "epochs of fine-tuning"

    @property
    def x(self) -> np.ndarray:
        return self.epochs

    @property
    def n_clean(self) -> int:
        return int(len(self.clean_keys))

    def relative_asr_drop(self) -> float:
        """``(ASR before - ASR after) / ASR before`` (``nan`` when there was no attack success to drop)."""
        before, after = float(self.asr[0]), float(self.asr[-1])
        return (before - after) / before if before > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "x_label": self.x_label, "epochs": self.epochs, "clean_acc": self.clean_acc,
                "asr": self.asr, "loss": self.loss, "n_clean": self.n_clean, "clean_keys": self.clean_keys,
                "params": self.params, "seconds": self.seconds}

    def to_json(self, path: str | os.PathLike) -> Path:
        """The curves and settings (not the model) as JSON, written atomically."""
        return atomic_write_json(path, self.to_dict())


def select_clean_subset(dataset: IndexedDataset, *, fraction: float | None = None,
                        clean_indices: Sequence[int] | np.ndarray | str | os.PathLike | None = None,
                        seed: int = 0) -> IndexedSubset:
    """The clean images to fine-tune on: a seeded per-class ``fraction`` of ``dataset``, or the given indices.

    ``clean_indices`` are dataset keys, or the path of a sanitiser's ``clean_indices.txt``
    (:func:`sslguard.sanitize.read_index_list`). With both, the fraction is drawn from those indices.
    The fraction is taken per class (at least one image of every class present), so a 5% subset keeps
    the class balance of the source.
    """
    if clean_indices is None and fraction is None:
        raise ValueError("give fraction (of the clean dataset) or clean_indices (from sanitising)")
    pool = dataset
    if clean_indices is not None:
        if isinstance(clean_indices, (str, os.PathLike)):
            clean_indices = read_index_list(clean_indices)
        keys = np.unique(np.asarray(clean_indices, dtype=np.int64))
        if not len(keys):
            raise ValueError("clean_indices is empty: nothing to fine-tune on")
        pool = dataset.subset(dataset.positions_of(keys))
    if fraction is None:
        return pool if isinstance(pool, IndexedSubset) else pool.subset(np.arange(len(pool)))
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(pool.labels)
    if (labels < 0).any():
        raise ValueError("fine-tuning needs labels; this dataset has unlabeled images")
    rng = np.random.default_rng([int(seed), 4242])
    picks = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        n = max(1, int(round(float(fraction) * len(pos))))
        picks.append(rng.choice(pos, size=n, replace=False))
    return pool.subset(np.sort(np.concatenate(picks)))


def finetune(
    model: nn.Module,
    clean_dataset: IndexedDataset,
    test_dataset: IndexedDataset,
    attack=None,
    *,
    fraction: float | None = 0.05,
    clean_indices: Sequence[int] | np.ndarray | str | os.PathLike | None = None,
    probe: nn.Module | None = None,
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 64,
    mode: str = "finetune",
    backbone_lr_scale: float = 1.0,
    weight_decay: float = 5e-4,
    augment: bool = True,
    loss_fn: Callable | None = None,
    seed: int = 0,
    copy_model: bool = True,
    accelerator=None,
    image_size: int | None = None,
    eval_batch_size: int = 256,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model`` on a small clean set and measure clean accuracy and ASR after every epoch.

    Args:
        model: a backdoored :class:`~sslguard.models.classifier.Classifier`, or an SSL encoder
            (:class:`~sslguard.models.backbones.StagedBackbone`) with its linear ``probe``.
        clean_dataset: labelled images believed clean (a held-out clean split, or the training set when
            ``clean_indices`` name its kept images).
        test_dataset, attack: where clean accuracy and ASR are measured
            (:func:`sslguard.train.classifier.evaluate_classifier`); ``attack=None`` gives ASR ``nan``.
        fraction, clean_indices, seed: which clean images (:func:`select_clean_subset`).
        epochs, lr, batch_size, backbone_lr_scale, weight_decay, augment: the training run (SGD with
            momentum, cosine decay, crop+flip augmentation: :func:`sslguard.train.classifier.train_classifier`).
        mode: ``"finetune"`` (every layer) or ``"linear"`` (the head only).
        loss_fn: a training-time regulariser (:mod:`sslguard.train.regularizers`) or any ``loss_fn``.
        copy_model: work on a deep copy (default) so ``model`` stays the backdoored original.

    Returns a :class:`FinetuneResult` whose curves have ``epochs + 1`` points.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if isinstance(model, StagedBackbone):
        if probe is None:
            raise ValueError("an encoder needs its probe (an nn.Linear head) to be fine-tuned as a classifier")
        net = Classifier(copy.deepcopy(model) if copy_model else model, probe.out_features)
        net.head = copy.deepcopy(probe) if copy_model else probe
    else:
        if probe is not None:
            raise ValueError("probe is only for an encoder; a Classifier already has its head")
        net = copy.deepcopy(model) if copy_model else model
    subset = select_clean_subset(clean_dataset, fraction=fraction, clean_indices=clean_indices, seed=seed)
    if len(np.unique(subset.labels)) < 2:
        raise ValueError("the clean subset holds fewer than two classes; fine-tuning would collapse the head")

    def measure() -> dict[str, float]:
        return evaluate_classifier(net, test_dataset, attack, batch_size=eval_batch_size, accelerator=accelerator,
                                   image_size=image_size, seed=seed)

    t0 = time.perf_counter()
    first = measure()
    clean_acc, asr, losses = [first["clean_acc"]], [first["asr"]], [float("nan")]

    def after_epoch(epoch: int, _model: nn.Module, stats: dict[str, float]) -> None:
        m = measure()
        clean_acc.append(m["clean_acc"])
        asr.append(m["asr"])
        losses.append(float(stats["loss"]))
        log.info("finetune epoch %d: loss %.4f clean acc %.4f ASR %.4f", epoch + 1, stats["loss"], m["clean_acc"], m["asr"])

    train_classifier(net, subset, epochs=epochs, batch_size=batch_size, lr=lr, mode=mode, seed=seed, accelerator=accelerator,
                     augment=augment, weight_decay=weight_decay, backbone_lr_scale=backbone_lr_scale,
                     image_size=image_size, loss_fn=loss_fn, on_epoch_end=after_epoch, progress=progress)
    net.eval()
    params = {"mode": mode, "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "fraction": fraction,
              "backbone_lr_scale": float(backbone_lr_scale), "weight_decay": float(weight_decay),
              "augment": bool(augment), "seed": int(seed), "loss_fn": repr(loss_fn) if loss_fn is not None else None,
              "attack": getattr(attack, "name", None), "target": getattr(attack, "target", None),
              "n_test": int(len(test_dataset))}
    return FinetuneResult(net, np.arange(epochs + 1), np.asarray(clean_acc, dtype=np.float64),
                          np.asarray(asr, dtype=np.float64), np.asarray(losses, dtype=np.float64),
                          np.asarray(subset.keys, dtype=np.int64), params, time.perf_counter() - t0)
