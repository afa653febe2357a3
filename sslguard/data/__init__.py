"""Datasets keyed by index, attacks, poisoned views and ground-truth manifests."""

from sslguard.data.datasets import (
    ArrayDataset,
    ImageFolderDataset,
    IndexedDataset,
    IndexedSubset,
    build_dataset,
    load_cifar10,
    load_digits_dataset,
    subset_per_class,
)
from sslguard.data.images import ImageLoadError, SkippedFile, load_rgb, to_rgb
from sslguard.data.manifest import PoisonManifest, PoisonRecord
from sslguard.data.poisoned import PoisonedDataset, poison_dataset

__all__ = [
    "ArrayDataset", "ImageFolderDataset", "IndexedDataset", "IndexedSubset", "build_dataset", "load_cifar10",
    "load_digits_dataset", "subset_per_class", "ImageLoadError", "SkippedFile", "load_rgb", "to_rgb",
    "PoisonManifest", "PoisonRecord", "PoisonedDataset", "poison_dataset",
]
