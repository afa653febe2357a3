"""Weighted cosine kNN classification of embeddings: the standard SSL monitor.

Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance Discrimination", InstDisc)
and SimCLR/BYOL reproductions score a class by ``sum_{neighbours of that class} exp(cos / t)`` over
the ``k`` nearest training embeddings; ``k=200, t=0.1`` are their defaults. The scoring is lightly's
:func:`lightly.utils.benchmarking.knn_predict`; this module adds chunking (memory stays
``O(chunk * N)``), numpy inputs and single-process feature extraction.

Limits: exact search (a dense similarity matrix per chunk), fine up to ~10^6 train items on CPU;
``extract_features`` runs in one process (multi-process gathering by index is in ``sslguard.embed``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict as _lightly_knn_predict

from sslguard.data.transforms import DEFAULT_MEAN, DEFAULT_STD, to_float
from sslguard.embed import extract


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def knn_predict(train_feats, train_labels, test_feats, k: int = 200, t: float = 0.1,
                num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Top-1 class per test embedding by temperature-weighted cosine kNN (InstDisc scoring).

    ``train_feats`` ``(N, D)``, ``train_labels`` ``(N,)`` ints >= 0, ``test_feats`` ``(M, D)``; numpy or
    torch. ``k`` is capped at ``N``. Returns a ``(M,)`` long tensor.
    """
    bank = F.normalize(_as_tensor(train_feats, torch.float32), dim=1)
    labels = _as_tensor(train_labels, torch.long)
    queries = F.normalize(_as_tensor(test_feats, torch.float32), dim=1)
    if bank.shape[0] != labels.shape[0]:
        raise ValueError(f"train_feats has {bank.shape[0]} rows but train_labels has {labels.shape[0]}")
    if bank.shape[0] == 0:
        raise ValueError("knn_predict: empty training set")
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"feature sizes differ: train {bank.shape[1]}, test {queries.shape[1]}")
    if (labels < 0).any():
        raise ValueError("knn_predict: training labels must be >= 0 (an unlabeled corpus cannot be scored)")
    n_cls = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    kk = max(1, min(int(k), bank.shape[0]))
    bank_t = bank.t().contiguous()
    out = [
        _lightly_knn_predict(queries[i:i + chunk], bank_t, labels, n_cls, knn_k=kk, knn_t=t)[:, 0]
        for i in range(0, queries.shape[0], chunk)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 200, t: float = 0.1,
                 num_classes: int | None = None) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``test_labels``."""
    test_labels = _as_tensor(test_labels, torch.long)
    n_cls = num_classes if num_classes is not None else int(max(int(_as_tensor(train_labels).max()),
                                                                 int(test_labels.max()))) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k=k, t=t, num_classes=n_cls)
    if pred.shape[0] != test_labels.shape[0]:
        raise ValueError(f"test_feats has {pred.shape[0]} rows but test_labels has {test_labels.shape[0]}")
    return float((pred == test_labels).float().mean()) if pred.numel() else float("nan")


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset, batch_size: int = 256, image_size: int | None = None,
                     device: str | torch.device | None = None, mean=DEFAULT_MEAN, std=DEFAULT_STD,
                     channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled backbone features of every item of ``dataset`` in order: ``(feats, labels, keys)``.

    Images are resized to ``image_size`` (shorter side + centre crop; ``None`` keeps their size) and
    normalised with ``mean``/``std`` (the encoder's training normalisation). The backbone is run in
    eval mode and its previous mode is restored.
    """
    dev = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()

    def fn(images: torch.Tensor) -> torch.Tensor:
        x = to_float(images, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return backbone(x)

    try:
        keys, out = extract(dataset, fn, batch_size=batch_size, image_size=image_size, device=dev,
                            desc="features", progress=False)
    finally:
        backbone.train(was_training)
    if not len(keys):
        return np.zeros((0, getattr(backbone, "feature_dim", 0)), np.float32), np.zeros(0, np.int64), keys
    return out["features"], np.asarray(dataset.labels, dtype=np.int64), keys
