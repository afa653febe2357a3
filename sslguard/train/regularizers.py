"""Training-time regularisers for :func:`sslguard.train.classifier.train_classifier`.

Truong et al. 2020 ("Systematic Evaluation of Backdoor Data Poisoning Attacks on Image Classifiers",
CVPR workshops) trained backdoored models with several regularisers and found that attack success
depends on them. Each regulariser here is an object with the trainer's ``loss_fn`` signature,
``reg(model, images, labels, index) -> loss``, where ``images`` is the augmented, normalised float
batch the trainer built; pass it as ``train_classifier(..., loss_fn=reg)``:

- :class:`Mixup` — Zhang, Cisse, Dauphin & Lopez-Paz 2018, "mixup: Beyond Empirical Risk Minimization";
- :class:`ManifoldMixup` — Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating
  Hidden States" (mixing at a random backbone stage);
- :class:`LogitSqueezing` — Kannan, Kurakin & Goodfellow 2018, "Adversarial Logit Pairing" (sec. 5:
  penalise the norm of the logits);
- :class:`ContrastiveRegularizer` — a supervised-contrastive (Khosla et al. 2020, "Supervised Contrastive
  Learning", eq. 2) or SimCLR NT-Xent (Chen et al. 2020) term on the penultimate features of two views,
  added to cross-entropy.

All of them draw their randomness (mixing weights, partners, stages, the second view) from their own
seeded generators, so a run repeats. They find layers through forward hooks on the unwrapped
:class:`~sslguard.models.classifier.Classifier` and still call the model the trainer passed (which may be
an accelerate/DDP wrapper), so gradient synchronisation across processes is untouched.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sslguard.train.classifier import random_crop_flip

log = logging.getLogger(__name__)

REGULARIZERS = ("none", "mixup", "manifold_mixup", "logit_squeezing", "contrastive")


def _unwrap(model: nn.Module) -> nn.Module:
    """The Classifier under an accelerate/DDP wrapper (``.module``), or the model itself."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


@contextmanager
def _forward_hook(module: nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _mixed_ce(logits: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    # Zhang et al. eq. (1) for one-hot targets: CE against the mixed target is the mixed CE.
    return lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(logits, labels[perm])


class _Seeded:
    """Seeded numpy (Beta draws, stage choice) and torch (permutations) generators."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._np = np.random.default_rng([self.seed, 9109])
        self._torch = torch.Generator()
        self._torch.manual_seed(self.seed * 7919 + 13)

    def _lam(self, alpha: float) -> float:
        # alpha == 0 is the limit of Beta(alpha, alpha) without mixing: every sample keeps its own image.
        if alpha <= 0.0:
            return 1.0
        lam = float(self._np.beta(alpha, alpha))
        return lam if np.isfinite(lam) else 1.0

    def _perm(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, generator=self._torch).to(device)


class Mixup(_Seeded):
    """Input mixup (Zhang et al. 2018): train on ``lam * x_i + (1 - lam) * x_j`` with the same mix of targets.

    ``lam ~ Beta(alpha, alpha)`` once per batch and ``j`` a random permutation of the batch, as in the
    authors' implementation. The loss is ``lam * CE(f(x_mix), y) + (1 - lam) * CE(f(x_mix), y_perm)``.
    ``alpha = 0`` means no mixing (plain cross-entropy); as ``alpha -> 0`` the draws go to 0 or 1, and
    either end is plain cross-entropy of the (possibly permuted) batch, whose mean is the same.

    Limits: one ``lam`` per batch (the paper's choice, not per sample); on a backdoored corpus a mixed
    image carries a faded trigger with a partly-target label, which is why it may change attack success.
    """

    name = "mixup"

    def __init__(self, alpha: float = 1.0, seed: int = 0):
        if alpha < 0:
            raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
        super().__init__(seed)
        self.alpha = float(alpha)
        # The last batch's draws, kept so a caller (or a test) can recompute the loss.
        self.last_lam: float | None = None
        self.last_perm: torch.Tensor | None = None

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        lam = self._lam(self.alpha)
        perm = self._perm(images.shape[0], images.device)
        self.last_lam, self.last_perm = lam, perm
        mixed = lam * images + (1.0 - lam) * images[perm]
        return _mixed_ce(model(mixed), labels, perm, lam)

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha}, seed={self.seed})"


class ManifoldMixup(_Seeded):
    """Manifold mixup (Verma et al. 2019): mix hidden states at a randomly chosen layer.

    For each batch a layer ``k`` is drawn uniformly from ``stages`` (``"input"`` is the input itself, so
    ``k = 0`` is input mixup, as in the paper); the output of stage ``k`` is replaced by
    ``lam * h + (1 - lam) * h[perm]`` through a forward hook, the rest of the network runs on the mixed
    state, and the loss is mixup's mixed cross-entropy. ``lam ~ Beta(alpha, alpha)`` (the paper uses
    ``alpha = 2`` for CIFAR).

    ``stages=None`` picks the input and every backbone stage but the last (the paper mixes at the input
    and after the first residual blocks; mixing after the last stage would mix only the pooled
    features). Limits: it needs a :class:`~sslguard.models.backbones.StagedBackbone` with several stages;
    a backbone with one stage (a wrapped timm model) leaves only the input, i.e. plain mixup, and a
    warning says so.
    """

    name = "manifold_mixup"

    def __init__(self, alpha: float = 2.0, stages: Sequence[str] | None = None, seed: int = 0):
        if alpha < 0:
            raise ValueError(f"manifold mixup alpha must be >= 0, got {alpha}")
        super().__init__(seed)
        self.alpha = float(alpha)
        self.stages = list(stages) if stages is not None else None
        self.last_stage: str | None = None
        self.last_lam: float | None = None
        self.last_perm: torch.Tensor | None = None
        self._warned = False

    def eligible(self, model: nn.Module) -> list[str]:
        """Layers mixing may happen at for ``model`` (``"input"`` first, then stage names)."""
        net = _unwrap(model)
        names = list(getattr(getattr(net, "backbone", None), "stage_names", []))
        if self.stages is not None:
            unknown = [s for s in self.stages if s != "input" and s not in names]
            if unknown:
                raise ValueError(f"manifold mixup stages {unknown} are not stages of this model ({names})")
            return list(self.stages)
        out = ["input"] + names[:-1]
        if len(out) == 1 and not self._warned:
            log.warning("manifold mixup: the backbone has %d stage(s); only input mixup is possible", len(names))
            self._warned = True
        return out

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        layers = self.eligible(model)
        stage = layers[int(self._np.integers(len(layers)))]
        lam = self._lam(self.alpha)
        perm = self._perm(images.shape[0], images.device)
        self.last_stage, self.last_lam, self.last_perm = stage, lam, perm
        if stage == "input":
            return _mixed_ce(model(lam * images + (1.0 - lam) * images[perm]), labels, perm, lam)

        def mix(_module, _inputs, output):
            return lam * output + (1.0 - lam) * output[perm]

        with _forward_hook(_unwrap(model).backbone.stages[stage], mix):
            logits = model(images)
        return _mixed_ce(logits, labels, perm, lam)

    def __repr__(self) -> str:
        return f"ManifoldMixup(alpha={self.alpha}, stages={self.stages}, seed={self.seed})"


class LogitSqueezing:
    """Logit squeezing (Kannan et al. 2018): ``CE(z, y) + weight * mean_i ||z_i||_2^2``.

    Penalising the squared norm of the logits ``z`` keeps them small, which flattens the softmax and
    was proposed as a cheap robustness regulariser. Limits: the weight trades accuracy for smaller
    logits; Kannan et al. tuned it per dataset, and ``0.05`` here is a starting point, not their value.
    """

    name = "logit_squeezing"

    def __init__(self, weight: float = 0.05):
        if weight < 0:
            raise ValueError(f"logit squeezing weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        return F.cross_entropy(logits, labels) + self.weight * logits.pow(2).sum(dim=1).mean()

    def __repr__(self) -> str:
        return f"LogitSqueezing(weight={self.weight})"


def supervised_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    """SupCon loss ``L^sup_out`` of Khosla et al. 2020 (eq. 2) over two views ``z1``, ``z2`` ``(N, D)``.

    Each of the ``2N`` views is an anchor; its positives are every other view with the same label, its
    contrast set every other view. Features are L2-normalised here. Written by hand because lightly
    (1.6) has no supervised contrastive loss: its ``NTXentLoss`` treats only the other view of the same
    image as positive and takes no labels. With all labels distinct it reduces to NT-Xent.
    """
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    y = torch.cat([labels, labels], dim=0)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    # Mean log-probability over each anchor's positives (every anchor has >= 1: its other view).
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1)
    return -per_anchor.mean()


def crop_flip_view(padding: int = 4, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A seeded second-view augmentation on the trainer's float batch: random crop (padding) + flip."""
    gen = torch.Generator()
    gen.manual_seed(int(seed) * 104729 + 3)
    return lambda x: random_crop_flip(x, padding, True, gen)


class ContrastiveRegularizer:
    """Cross-entropy plus a contrastive term on the penultimate features of two views.

    ``loss = CE(f(v1), y) + weight * C(h(v1), h(v2))`` where ``v1`` is the trainer's augmented batch,
    ``v2 = view(v1)`` a second augmentation of it (default: another random crop + flip), ``h`` the
    pooled backbone features (:meth:`Classifier.penultimate`) and ``C`` either the supervised contrastive
    loss of Khosla et al. 2020 (``supervised=True``; positives are same-label views) or SimCLR's NT-Xent
    via ``lightly.loss.NTXentLoss`` (``supervised=False``; positive is the other view of the same image).
    Both views go through the model in one forward pass (so BatchNorm sees both), and the features are
    read by a hook on the backbone, so the model the trainer passes is called as is.

    Limits: Khosla et al. train the encoder with SupCon first (with a projection head and strong
    augmentation, large batches) and fit a classifier afterwards; here the term is a regulariser beside
    cross-entropy, without a projection head, and the second view is only crop + flip of an already
    augmented image. Each step costs two forward passes' worth of compute.
    """

    name = "contrastive"

    def __init__(self, weight: float = 0.1, temperature: float = 0.1, supervised: bool = True,
                 view: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0):
        if weight < 0:
            raise ValueError(f"contrastive weight must be >= 0, got {weight}")
        if temperature <= 0:
            raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.supervised = bool(supervised)
        self.seed = int(seed)
        self.view = view if view is not None else crop_flip_view(seed=seed)
        self._ntxent = None
        if not self.supervised:
            from lightly.loss import NTXentLoss

            self._ntxent = NTXentLoss(temperature=self.temperature)

    def contrastive(self, h1: torch.Tensor, h2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.supervised:
            return supervised_contrastive_loss(h1, h2, labels, self.temperature)
        return self._ntxent(h1, h2)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        both = torch.cat([images, self.view(images)], dim=0)
        feats: list[torch.Tensor] = []

        def grab(_module, _inputs, output):
            feats.append(output)

        with _forward_hook(_unwrap(model).backbone, grab):
            logits = model(both)
        h = feats[-1]
        return F.cross_entropy(logits[:n], labels) + self.weight * self.contrastive(h[:n], h[n:], labels)

    def __repr__(self) -> str:
        return (f"ContrastiveRegularizer(weight={self.weight}, temperature={self.temperature}, "
                f"supervised={self.supervised}, seed={self.seed})")


def build_regularizer(name: str, *, seed: int = 0, **kwargs) -> Callable | None:
    """A regulariser by name (``none``, ``mixup``, ``manifold_mixup``, ``logit_squeezing``, ``contrastive``).

    ``none`` gives ``None`` (the trainer's own cross-entropy path, which also tracks training accuracy).
    ``kwargs`` go to the class (``alpha``, ``weight``, ``temperature``, ``stages``, ``supervised``).
    """
    if name == "none":
        if kwargs:
            raise ValueError(f"regulariser 'none' takes no parameters, got {sorted(kwargs)}")
        return None
    if name == "mixup":
        return Mixup(seed=seed, **kwargs)
    if name == "manifold_mixup":
        return ManifoldMixup(seed=seed, **kwargs)
    if name == "logit_squeezing":
        return LogitSqueezing(**kwargs)
    if name == "contrastive":
        return ContrastiveRegularizer(seed=seed, **kwargs)
    raise ValueError(f"unknown regulariser {name!r}; choose from {REGULARIZERS}")
