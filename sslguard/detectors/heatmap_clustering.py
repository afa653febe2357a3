"""Heatmap clustering (Schulth, Berghoff & Neu 2022, "Detecting Backdoor Poisoning Attacks on Deep
Neural Networks by Heatmap Clustering").

Instead of activations, the explanations are clustered: for every label, a layer-wise relevance
propagation (LRP) heatmap of each image carrying it is computed w.r.t. that label's logit; the
heatmaps are summed over colour channels, average-pooled to ``heatmap_size`` x ``heatmap_size``
and L2-normalised, and split by k-means with k=2. A poisoned class splits into heatmaps that point at
the object and heatmaps that point at the trigger. The decision rules, the choice of the poison
cluster and the score are those of :mod:`sslguard.detectors.activation_clustering` (shared code).

LRP comes from zennit (Anders et al. 2021): ``rule="epsilon_plus_flat"`` (default; zennit's
``EpsilonPlusFlat``: flat rule on the first layer, z+ on convolutions, epsilon on dense layers) or
``"epsilon_plus"``, with BatchNorm merged into the preceding convolution
(``SequentialMergeBatchNorm``) and the residual sums of ``cifar_resnet18`` blocks given their own
relevance rule by zennit's BasicBlock canonizer (its ``isinstance`` test names torchvision's class, so
a subclass here points it at this package's block, which has the same layout). The pooled head is
run as an ``nn.AdaptiveAvgPool2d`` module, so zennit's Norm rule redistributes relevance through it.

zennit is an optional extra: ``pip install sslguard[lrp]``.

Defaults (the measurements behind each: ``benchmarks/defaults.md#heatmap_clustering``):

- ``rule="epsilon_plus_flat"``, ``heatmap_size=16``, ``reduce="none"``: the heatmaps are clustered as
  pooled. Evidence: benchmarks/defaults.md#heatmap_clustering.
- the decision and cluster-choice defaults (``decision="auto"``, ``poison_cluster="auto"``, the class
  test of the reference decision, ``reference_tolerance=1.0``, ...): activation clustering's. Evidence:
  benchmarks/defaults.md#activation_clustering, benchmarks/defaults.md#heatmap_clustering and, for the
  shifted trusted set, benchmarks/classifier_shift.md.

Limits: the shift a trusted set may have is activation clustering's (the same class test: the heatmap
suspect cluster must lie farther from the trusted heatmaps than the other classes' do). On MNIST with
the other half of the writers as trusted set the binomial test alone flagged 8 of 9 clean classes and
the class test none; blurred, darkened, brightened or thickened trusted digits moved heatmaps less than
activations (the fixed tolerance of before flagged clean classes in 2 runs of 25 for heatmaps, 15 for
activations), and the class test flagged a clean class in one run, missed the target in one
(benchmarks/classifier_shift.md). Without a trusted set the decision is the silhouette outlier rule and
has no null for a clean corpus (activation clustering's Limits).
Only :class:`~sslguard.models.backbones.StagedBackbone` classifiers made of ordinary conv
stages (``convnet4``, ``cifar_resnet18``, the torchvision ResNets) are supported, not timm models.
The clustering here is k-means with k=2 on pooled, L2-normalised heatmaps (with the decision rules of
activation clustering); the paper's own clustering procedure and distance differ in detail.
LRP costs about one backward pass per image.

Against activation clustering: the paper reports heatmap clustering ahead of activation clustering;
on this package's CIFAR-10 benchmark (a small convnet, a 50% poison share in the target class) it is
level at best: with trusted reference images deciding, both find the poisoned class and nearly every
poison and lie within about a point of F1 of each other, activation clustering ahead; without them
the heatmap split takes a few percent of the clean target-class images into the poison cluster,
where the activation split is (nearly) exact. A heatmap records *where* the evidence for the label lies (16 x 16 cells), so a clean
image whose relevance sits in the trigger's corner looks like a triggered one, while the penultimate
activations record *what* the network saw (see the precision column of ``benchmarks/classifier.md``).
This is one small model and one trigger, not a refutation of the paper. Heatmaps are computed one class at a time (each class
is one sharded pass), because the relevance target is the class.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslguard.data.transforms import to_float
from sslguard.detectors.activation_clustering import two_cluster_analysis
from sslguard.detectors.base import DetectionResult, register_detector

RULES = ("epsilon_plus_flat", "epsilon_plus")


def _require_zennit():
    """Import zennit, or say how to install it."""
    import importlib

    try:
        importlib.import_module("zennit")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "heatmap_clustering needs zennit for LRP; install it with: pip install sslguard[lrp]", name="zennit"
        ) from None


def _composite(rule: str):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus, EpsilonPlusFlat
    from zennit.layer import Sum
    from zennit.torchvision import ResNetBasicBlockCanonizer

    from sslguard.models.backbones import BasicBlock

    class BlockCanonizer(ResNetBasicBlockCanonizer):
        """zennit's BasicBlock canonizer for this package's BasicBlock (same attribute layout)."""

        @classmethod
        def _attribute_map(cls, name, module):
            if isinstance(module, BasicBlock):
                return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
            return None

    canonizers = [SequentialMergeBatchNorm(), BlockCanonizer()]
    return (EpsilonPlusFlat if rule == "epsilon_plus_flat" else EpsilonPlus)(canonizers=canonizers)


def lrp_view(model) -> nn.Sequential:
    """The classifier as one ``nn.Sequential`` sharing its modules: stages, pooling module, head."""
    from sslguard.models.backbones import TimmBackbone

    bb = model.backbone
    if isinstance(bb, TimmBackbone):
        raise TypeError("heatmap_clustering supports StagedBackbone conv classifiers, not timm backbones")
    return nn.Sequential(*[bb.stages[n] for n in bb.stage_names], nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.head)


def lrp_heatmaps(model, dataset, target: int, *, rule: str = "epsilon_plus_flat", heatmap_size: int = 16,
                 batch_size: int = 128, accelerator=None, image_size: int | None = None,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, heatmaps (N, heatmap_size**2))`` of ``dataset`` w.r.t. class ``target``: LRP relevance
    summed over colour channels, average-pooled, L2-normalised."""
    _require_zennit()
    from sslguard.embed import extract

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    was_training = model.training
    model.eval()
    view = lrp_view(model)
    composite = _composite(rule)

    def fn(images: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():  # extract runs under no_grad; LRP is a modified backward pass
            x = to_float(images).requires_grad_(True)
            out = view(x)
            (rel,) = torch.autograd.grad(out[:, target].sum(), x)
        heat = rel.sum(1, keepdim=True)
        heat = F.adaptive_avg_pool2d(heat, heatmap_size).flatten(1)
        return F.normalize(heat, dim=1)

    try:
        with composite.context(view):
            keys, out = extract(dataset, fn, batch_size=batch_size, image_size=image_size, accelerator=accelerator,
                                desc=f"LRP class {target}", progress=progress)
    finally:
        model.train(was_training)
    return keys, out["features"]


def label_heatmaps(model, dataset, *, rule: str = "epsilon_plus_flat", heatmap_size: int = 16, batch_size: int = 128,
                   accelerator=None, image_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Heatmaps ``(N, heatmap_size**2)`` of every image w.r.t. its own label, in dataset order
    (one sharded LRP pass per label)."""
    labels = np.asarray(dataset.labels)
    heatmaps = np.zeros((len(labels), heatmap_size * heatmap_size), dtype=np.float32)
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        _, h = lrp_heatmaps(model, dataset.subset(pos), int(c), rule=rule, heatmap_size=heatmap_size,
                            batch_size=batch_size, accelerator=accelerator, image_size=image_size, progress=progress)
        heatmaps[pos] = h
    return heatmaps


@register_detector("heatmap_clustering", stage="classifier", unit="cluster")
def heatmap_clustering(
    model,
    dataset,
    *,
    rule: str = "epsilon_plus_flat",
    heatmap_size: int = 16,
    reduce: str = "none",
    n_components: int = 10,
    decision: str = "auto",
    size_threshold: float = 0.35,
    silhouette_threshold: float = 0.10,
    outlier_z: float = 3.0,
    poison_cluster: str = "auto",
    heatmaps: np.ndarray | None = None,
    reference=None,
    reference_heatmaps: np.ndarray | None = None,
    reference_alpha: float = 0.05,
    reference_tolerance: float = 1.0,
    class_test: str = "outlier",
    batch_size: int = 128,
    accelerator=None,
    image_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> DetectionResult:
    """Heatmap clustering of ``dataset`` under ``model`` (labels as given); see the module docstring.

    ``heatmaps`` (``(N, heatmap_size**2)``, dataset order) skips LRP. ``reference``: a small labelled set
    of trusted clean images (``reference_heatmaps`` skips their LRP) that picks the poison cluster under
    ``poison_cluster="auto"`` and decides the class under ``decision="auto"`` (binomial test and class test,
    ``class_test``), as in activation clustering. ``reduce`` (``none``/``pca``/``ica``)
    optionally reduces the heatmaps before k-means. Every process of an accelerate run gets the same result.
    """
    t0 = time.perf_counter()
    labels = np.asarray(dataset.labels)
    if heatmaps is None:
        heatmaps = label_heatmaps(model, dataset, rule=rule, heatmap_size=heatmap_size, batch_size=batch_size,
                                  accelerator=accelerator, image_size=image_size, progress=progress)
    ref_labels = None
    if reference is not None:
        ref_labels = np.asarray(reference.labels)
        if reference_heatmaps is None:
            reference_heatmaps = label_heatmaps(model, reference, rule=rule, heatmap_size=heatmap_size,
                                                batch_size=batch_size, accelerator=accelerator,
                                                image_size=image_size, progress=progress)
    t1 = time.perf_counter()
    scores, flagged, cluster, margin, per_class = two_cluster_analysis(
        heatmaps, labels, reduce=reduce, n_components=n_components, decision=decision, size_threshold=size_threshold,
        silhouette_threshold=silhouette_threshold, outlier_z=outlier_z, poison_cluster=poison_cluster,
        reference=reference_heatmaps if reference is not None else None, reference_labels=ref_labels,
        reference_alpha=reference_alpha, reference_tolerance=reference_tolerance, class_test=class_test, seed=seed)
    info = {"per_class": per_class, "rule": rule, "heatmap_size": heatmap_size, "reduce": reduce,
            "decision": decision, "poison_cluster": poison_cluster, "size_threshold": size_threshold,
            "silhouette_threshold": silhouette_threshold, "outlier_z": outlier_z,
            "reference_alpha": reference_alpha, "reference_tolerance": reference_tolerance, "class_test": class_test,
            "flagged_classes": [int(k) for k, v in per_class.items() if v.get("poisoned")],
            "seconds_heatmaps": t1 - t0, "seconds_analysis": time.perf_counter() - t1}
    return DetectionResult("heatmap_clustering", np.asarray(dataset.keys), scores, flagged, 1.5,
                           {"cluster": cluster, "margin": margin, "label": labels}, info)
