"""Glue between ``(PIL image, label, index)`` datasets and batched tensors.

Augmentation happens on whole batches on the training device (see ``sslguard.train.augment``), so
the loader only turns images into ``uint8`` tensors of one size.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class TransformDataset(Dataset):
    """Apply ``transform`` to the image of each ``(image, label, index)`` item."""

    def __init__(self, dataset, transform: Callable):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pos):
        img, label, index = self.dataset[pos]
        return self.transform(img), label, index


class ResizeUint8:
    """PIL image -> ``uint8`` tensor ``(3, size, size)``; resize (shorter side) + centre crop when needed.

    Images longer than ``MAX_ASPECT`` times their shorter side are centre-cropped to that ratio first:
    only the centre survives the final crop anyway, and a hostile 1 x 10^6 pixel strip would otherwise
    be upscaled to 32 x 3.2*10^7 pixels (gigabytes) before it. Other images are unaffected.
    """

    MAX_ASPECT = 8

    def __init__(self, size: int | None):
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.size is not None and img.size != (self.size, self.size):
            w, h = img.size
            keep = self.MAX_ASPECT * min(w, h)
            if max(w, h) > keep:
                left, top = max(0, (w - keep) // 2), max(0, (h - keep) // 2)
                img = img.crop((left, top, left + min(w, keep), top + min(h, keep)))
                w, h = img.size
            scale = self.size / min(w, h)
            img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def collate_uint8(batch):
    """Stack ``(uint8 CHW tensor, label, index)`` items into ``(images, labels, indices)`` tensors."""
    images, labels, indices = zip(*batch)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(indices, dtype=torch.long)


# The project's normalisation (saved in encoder metadata; augmentations, kNN and CAM use the same).
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def to_float(images: torch.Tensor, mean=DEFAULT_MEAN, std=DEFAULT_STD) -> torch.Tensor:
    """``uint8`` batch -> normalised float batch on the same device."""
    x = images.float().div_(255.0)
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def uint8_loader(dataset, batch_size: int, image_size: int | None, shuffle: bool = False, num_workers: int = 0,
                 drop_last: bool = False, seed: int = 0):
    """A DataLoader that yields ``(uint8 images, labels, indices)`` batches of one image size."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.utils.data.DataLoader(
        TransformDataset(dataset, ResizeUint8(image_size)),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_uint8,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=num_workers > 0,
    )
