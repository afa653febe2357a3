"""Downstream classifier: a :class:`StagedBackbone` followed by one linear layer.

The same module serves three set-ups (see :func:`sslguard.train.classifier.train_classifier`): a
supervised model trained from scratch, a linear probe on a frozen SSL encoder, and a fine-tune of that
encoder. The classifier-stage detectors (activation clustering, heatmap clustering, critical layer,
spectral signatures, l-infinity pruning) read its layers through three entry points:

- :meth:`Classifier.penultimate` — pooled backbone features, the input of the linear head;
- :meth:`Classifier.forward_intermediates` — every backbone stage plus ``penultimate`` and ``logits``;
- :attr:`Classifier.stages` / :attr:`Classifier.last_stage` — the backbone's named stages
  (the last stage is "the last convolutional layer" whose channels l-infinity pruning masks).

Inputs are normalised float batches (``sslguard.data.transforms.to_float``); the helpers below take
``uint8`` batches, normalise them, and run through :func:`sslguard.embed.extract`, so they work on
one process or under ``accelerate launch`` and always return rows in dataset order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslguard.data.transforms import to_float
from sslguard.models.backbones import StagedBackbone, create_backbone
from sslguard.embed import extract
from sslguard.models.ssl import load_backbone


class ChannelMask(nn.Module):
    """Multiplies a ``(N, C, h, w)`` map by a fixed 0/1 mask over channels (a pruned neuron outputs 0).

    Kept as a module with a buffer, so a pruned classifier saves and loads like any other.
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float32).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)


class Classifier(nn.Module):
    """``backbone`` (pooled features) -> optional dropout -> ``nn.Linear(feature_dim, num_classes)``."""

    def __init__(self, backbone: StagedBackbone, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    # ------------------------------------------------------------------ layer access
    @property
    def stages(self) -> nn.ModuleDict:
        return self.backbone.stages

    @property
    def stage_names(self) -> list[str]:
        return list(self.backbone.stage_names)

    @property
    def last_stage(self) -> nn.Module:
        return self.backbone.last_stage

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(N, feature_dim)`` (the activations of Chen et al. 2018)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.penultimate(x)))

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's map, then ``penultimate`` (pooled) and ``logits``, in forward order.

        Uses the backbone's own ``forward_intermediates`` only to collect the maps; the pooled feature
        is recomputed from the last map so a backbone whose ``forward`` is not "pool the last stage"
        (timm ViTs) still gets the same ``penultimate`` as :meth:`penultimate`.
        """
        maps = self.backbone.forward_intermediates(x)
        out = dict(maps)
        if _pools_last_stage(self.backbone):
            feats = self.backbone.pool(list(maps.values())[-1])
        else:
            feats = self.penultimate(x)
        out["penultimate"] = feats
        out["logits"] = self.head(feats)
        return out

    def prune_channels(self, mask: torch.Tensor | np.ndarray) -> None:
        """Mask channels of the last stage in place (``mask[c] == 0`` prunes channel ``c``).

        Applying it again replaces the previous mask rather than stacking masks.
        """
        name = self.backbone.stage_names[-1]
        stage = self.backbone.stages[name]
        if isinstance(stage, nn.Sequential) and len(stage) == 2 and isinstance(stage[1], ChannelMask):
            stage = stage[0]
        self.backbone.stages[name] = nn.Sequential(stage, ChannelMask(torch.as_tensor(np.asarray(mask))))


def _pools_last_stage(backbone: StagedBackbone) -> bool:
    # StagedBackbone.forward is pool(forward_features); subclasses (TimmBackbone) override forward.
    return type(backbone).forward is StagedBackbone.forward


def build_classifier(
    backbone: str | StagedBackbone = "convnet4",
    num_classes: int = 10,
    *,
    width: int | None = None,
    encoder_path: str | None = None,
    dropout: float = 0.0,
    seed: int | None = None,
) -> Classifier:
    """A :class:`Classifier` on a new backbone (``backbone`` by name, ``width`` where it has one), on a
    given backbone module, or on an SSL encoder saved by the SSL trainer (``encoder_path``, loaded with
    :func:`sslguard.models.ssl.load_backbone`). ``seed`` fixes the initial weights of new layers."""
    if seed is not None:
        torch.manual_seed(seed)
    if encoder_path is not None:
        net = load_backbone(encoder_path)
    elif isinstance(backbone, StagedBackbone):
        net = backbone
    else:
        net = create_backbone(backbone, **({"width": width} if width is not None else {}))
    return Classifier(net, num_classes, dropout=dropout)


# --------------------------------------------------------------------------------- batched helpers


def _eval_fn(model: nn.Module, fn):
    """Wrap ``fn(model, float_batch)`` for :func:`sslguard.embed.extract` (uint8 in, eval mode)."""

    def run(images: torch.Tensor):
        return fn(model, to_float(images))

    return run


def _run_eval(model: nn.Module, dataset, fn, *, batch_size: int, accelerator, image_size, desc: str, progress: bool):
    was_training = model.training
    model.eval()
    # without an accelerator the batches go where the model is (a classifier moved to a GPU stays there)
    device = None if accelerator is not None else next(model.parameters()).device
    try:
        return extract(dataset, _eval_fn(model, fn), batch_size=batch_size, image_size=image_size,
                       accelerator=accelerator, desc=desc, progress=progress, device=device)
    finally:
        model.train(was_training)


def predict(model: Classifier, dataset, *, batch_size: int = 256, accelerator=None, image_size: int | None = None,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, logits (N, num_classes))`` for every image of ``dataset``, in dataset order."""
    keys, out = _run_eval(model, dataset, lambda m, x: m(x), batch_size=batch_size, accelerator=accelerator,
                          image_size=image_size, desc="predicting", progress=progress)
    return keys, out["features"]


def penultimate_activations(model: Classifier, dataset, *, batch_size: int = 256, accelerator=None,
                            image_size: int | None = None, with_logits: bool = False,
                            progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(keys, {"penultimate": (N, D)[, "logits": (N, C)]})`` in dataset order."""

    def fn(m, x):
        f = m.penultimate(x)
        return {"penultimate": f, "logits": m.head(f)} if with_logits else {"penultimate": f}

    return _run_eval(model, dataset, fn, batch_size=batch_size, accelerator=accelerator, image_size=image_size,
                     desc="activations", progress=progress)


def layer_features(model: Classifier, dataset, layers: Sequence[str] | None = None, *, batch_size: int = 256,
                   accelerator=None, image_size: int | None = None,
                   progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Globally average-pooled output of each named layer (stage names, ``penultimate``, ``logits``).

    Pooling keeps one ``C``-vector per layer and image, so memory grows with channels, not pixels.
    """

    def fn(m, x):
        inter = m.forward_intermediates(x)
        names = list(inter) if layers is None else list(layers)
        missing = [n for n in names if n not in inter]
        if missing:
            raise KeyError(f"unknown layers {missing}; the model has {list(inter)}")
        return {n: (inter[n] if inter[n].ndim == 2 else F.adaptive_avg_pool2d(inter[n], 1).flatten(1)) for n in names}

    return _run_eval(model, dataset, fn, batch_size=batch_size, accelerator=accelerator, image_size=image_size,
                     desc="layer features", progress=progress)
