"""The one path from an :class:`~sslguard.config.SSLConfig` to a trained encoder.

The detection pipeline (its ``encoder`` and ``retrain`` stages), ``scripts/train_ssl.py``
(:func:`train_ssl_from_config`) and the benchmarks all build their encoder here, so a benchmark measures
the encoder users get.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from sslguard.config import SSLConfig, TrainSSLConfig, dump_yaml
from sslguard.models.ssl import build_ssl_model, make_backbone
from sslguard.train.augment import BatchAugment, ssl_augmentations
from sslguard.train.ssl import SSLTrainResult, train_ssl
from sslguard.data.datasets import build_dataset, subset_per_class
from sslguard.data.poisoned import poison_dataset
from sslguard.utils.io import atomic_write_json, atomic_write_text, package_versions
from sslguard.utils.seed import seed_everything


def ssl_views(ssl: SSLConfig, image_size: int) -> tuple[BatchAugment, BatchAugment]:
    """The two view augmentations of ``ssl.augment``: ``default`` is :func:`ssl_augmentations` (the method's
    own recipe at this size); ``lightly`` is lightly's ``SimCLRTransform`` defaults (jitter strength 1.0,
    blur p=0.5) for both views, stronger, which wipes out more natural-image cues than a pasted patch."""
    if ssl.augment == "lightly":
        v = BatchAugment(image_size, scale=(ssl.min_scale, 1.0), brightness=0.8, contrast=0.8, saturation=0.8,
                         hue=0.2, blur_prob=0.5)
        return v, v
    return ssl_augmentations(ssl.method, image_size, min_scale=ssl.min_scale)


PRELOAD_AUTO_BYTES = 4 * 2**30  # ssl.preload=auto: a uint8 corpus up to this size stays on the GPU


def resolve_preload(ssl: SSLConfig, dataset, image_size: int, device) -> bool:
    """``ssl.preload`` as a bool: ``auto`` preloads on a CUDA device when the corpus, as ``uint8`` at
    ``image_size``, takes at most :data:`PRELOAD_AUTO_BYTES` (CIFAR-10 is 150 MB, Imagenette at 224 px
    590 MB), as per-image decoding on the host would otherwise bound a GPU step."""
    if ssl.preload != "auto":
        return bool(ssl.preload)
    return torch.device(device).type == "cuda" and len(dataset) * 3 * image_size ** 2 <= PRELOAD_AUTO_BYTES


def train_encoder(ssl: SSLConfig, dataset, *, image_size: int, output_dir: str | os.PathLike,
                  batch_size: int | None = None, resume: bool = True, knn_train=None, knn_test=None,
                  num_workers: int = 0, preload: bool | None = None, accelerator=None, progress: bool = True,
                  meta: dict[str, Any] | None = None,
                  on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> SSLTrainResult:
    """Build the SimCLR/BYOL model ``ssl`` describes and train it on ``dataset`` (:func:`train_ssl`).

    The caller seeds (the pipeline per stage, the script with ``ssl.seed``). ``batch_size`` overrides
    ``ssl.batch_size`` (the pipeline caps it at the corpus size); the kNN monitor runs when ``ssl.knn_every``
    is set and both ``knn_train`` and ``knn_test`` are given. ``preload`` (default: :func:`resolve_preload`
    on the accelerator's device, or CUDA when there is one) and ``on_epoch_end`` go to :func:`train_ssl`.
    Returns its :class:`SSLTrainResult` (``encoder_path`` is the trained backbone).
    """
    model = build_ssl_model(ssl.method, make_backbone(ssl.backbone, **ssl.backbone_args()), **ssl.model_args())
    knn = ssl.knn_every > 0 and knn_train is not None and knn_test is not None
    if preload is None:
        dev = accelerator.device if accelerator is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        preload = resolve_preload(ssl, dataset, image_size, dev)
    return train_ssl(
        model, dataset, epochs=ssl.epochs, schedule_epochs=ssl.schedule_epochs,
        batch_size=ssl.batch_size if batch_size is None else batch_size, lr=ssl.lr, weight_decay=ssl.weight_decay,
        optimizer=ssl.optimizer, warmup_epochs=ssl.warmup_epochs, image_size=image_size,
        augment=ssl_views(ssl, image_size), output_dir=output_dir,
        seed=ssl.seed, mixed_precision=ssl.mixed_precision, channels_last=ssl.channels_last,
        checkpoint_every=ssl.checkpoint_every, resume=resume, knn_every=ssl.knn_every if knn else 0,
        knn_train=knn_train if knn else None, knn_test=knn_test if knn else None, knn_k=ssl.knn_k, knn_t=ssl.knn_t,
        num_workers=num_workers, preload=preload, accelerator=accelerator, progress=progress, meta=meta,
        on_epoch_end=on_epoch_end, compile=ssl.compile,
    )


def train_ssl_from_config(cfg: TrainSSLConfig, accelerator=None) -> SSLTrainResult:
    """Run a :class:`~sslguard.config.TrainSSLConfig` (``scripts/train_ssl.py``): build the data (and poison
    it), the kNN splits, and train with :func:`train_encoder`.

    Writes ``config.yaml``, ``versions.json`` (and the poison ``manifest`` when ``cfg.attack`` is set)
    into ``cfg.output_dir`` on the main process.
    """
    from pathlib import Path

    from accelerate import Accelerator


    d, s = cfg.data, cfg.ssl
    acc = accelerator if accelerator is not None else Accelerator(mixed_precision=s.mixed_precision,
                                                                   cpu=not torch.cuda.is_available())
    out = Path(cfg.output_dir)

    def dataset(split: str):
        return build_dataset(d.name, split=split, root=d.root, subset_per_class_n=d.subset_per_class,
                             seed=cfg.data_seed, on_error=d.on_error, image_size=d.image_size)

    train = dataset(d.split)
    train_clean = train
    manifest = None
    if cfg.attack is not None:
        train, manifest = poison_dataset(train, cfg.attack.build())
    knn_train = knn_test = None
    if s.knn_every:
        if not train_clean.has_labels:
            raise ValueError(f"ssl.knn_every: the {d.split} split has no labels; set ssl.knn_every=0")
        knn_train = train_clean if s.knn_train_per_class is None else subset_per_class(train_clean, s.knn_train_per_class,
                                                                                       cfg.data_seed)
        knn_test = dataset(d.test_split)
    if acc.is_main_process:
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        atomic_write_json(out / "versions.json", package_versions())
        if manifest is not None:
            manifest.save(out)
    acc.wait_for_everyone()

    seed_everything(s.seed)
    return train_encoder(s, train, image_size=d.image_size, output_dir=out, resume=cfg.resume, knn_train=knn_train,
                         knn_test=knn_test, num_workers=d.num_workers, accelerator=acc, progress=cfg.progress,
                         meta={"dataset": d.name, "attack": cfg.attack.name if cfg.attack else None})
