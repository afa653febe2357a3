"""Streaming feature extraction keyed by index, on one process or many (accelerate).

Each process takes a contiguous shard of the dataset, runs the model batch by batch (nothing but the
outputs is kept), and the shards are gathered with their dataset keys. Rows are de-duplicated on the
key and returned in the dataset's order, so the result never depends on the number of processes or
on batch boundaries (the contract "index is identity" of DESIGN.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sslguard.data.transforms import ResizeUint8, TransformDataset, collate_uint8, to_float
from sslguard.utils.io import NpyRowWriter, atomic_path

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
Sink = Callable[[np.ndarray, Outputs], None]


def _dist_info(accelerator, device: str | torch.device | None = None) -> tuple[int, int, torch.device]:
    if accelerator is not None:
        return accelerator.process_index, accelerator.num_processes, accelerator.device
    return 0, 1, torch.device(device if device is not None else "cpu")


def _gather(index: np.ndarray, outs: Outputs, world: int) -> tuple[np.ndarray, Outputs]:
    if world == 1:
        return index, outs
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, (index, outs))
    index = np.concatenate([g[0] for g in gathered])
    outs = {k: np.concatenate([g[1][k] for g in gathered]) for k in gathered[0][1]}
    return index, outs


class _Uint8Items(torch.utils.data.Dataset):
    """``(uint8 CHW tensor, label, key)`` items read with ``load_array``.

    Why not ``TransformDataset(dataset, ResizeUint8)``: that goes array -> PIL -> array for every item of
    an in-memory dataset (CIFAR, digits, a poisoned view), which cost as much as the forward pass of a
    small classifier; PIL is now used only when an image must be resized.
    """

    def __init__(self, dataset, size: int | None):
        self.dataset, self.size, self.resize = dataset, size, ResizeUint8(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pos):
        pos = int(pos)
        arr = self.dataset.load_array(pos)
        label, key = int(self.dataset.labels[pos]), int(self.dataset.keys[pos])
        if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8 and (
                self.size is None or arr.shape[:2] == (self.size, self.size)):
            arr = np.ascontiguousarray(arr)
            if not arr.flags.writeable:  # cached or memory-mapped arrays: torch wants to own writable memory
                arr = arr.copy()
            return torch.from_numpy(arr).permute(2, 0, 1), label, key
        return self.resize(self.dataset.load_image(pos)), label, key


def _items(dataset, image_size: int | None) -> torch.utils.data.Dataset:
    return (_Uint8Items(dataset, image_size) if hasattr(dataset, "load_array") and hasattr(dataset, "labels")
            else TransformDataset(dataset, ResizeUint8(image_size)))


def _to_numpy(out: torch.Tensor | dict[str, torch.Tensor]) -> Outputs:
    if isinstance(out, torch.Tensor):
        out = {"features": out}
    res = {}
    for k, v in out.items():
        v = v.detach()
        if v.is_floating_point():
            v = v.float()
        res[k] = v.cpu().numpy()
    return res


@torch.no_grad()
def extract(
    dataset,
    fn: Callable[[torch.Tensor], torch.Tensor | dict[str, torch.Tensor]],
    *,
    batch_size: int = 256,
    image_size: int | None = None,
    accelerator=None,
    num_workers: int = 0,
    desc: str = "extracting",
    progress: bool = True,
    device: str | torch.device | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, Outputs]:
    """Run ``fn`` on every image of ``dataset`` and return ``(keys, outputs)`` in dataset order.

    ``fn`` gets a ``uint8`` batch ``(B, 3, H, W)`` already on the device and returns a tensor or a dict
    of tensors with ``B`` rows; outputs come back as float32/int numpy arrays. With ``accelerator``,
    every process must call this (the gather is collective) and all get the full result; without
    one, batches go to ``device`` (default CPU).

    With ``sink``, each batch's outputs go to ``sink(positions, outputs)`` as soon as they are computed
    (``positions``: the rows' places in ``dataset``), on the process that computed them; nothing is kept
    or gathered, and ``(keys, {})`` is returned.
    """
    from tqdm.auto import tqdm

    rank, world, device = _dist_info(accelerator, device)
    n = len(dataset)
    # Batch j (the same images at any process count) goes to process j % world: each output is computed
    # in the same batch as in a one-process run, so the gathered result equals it (a contiguous shard per
    # process would change the batches, and with them a convolution's float result on some kernels).
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)][rank::world]
    items = _items(dataset, image_size)
    loader = torch.utils.data.DataLoader(items, batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=collate_uint8)
    keys: list[np.ndarray] = []
    chunks: dict[str, list[np.ndarray]] = {}
    bar = tqdm(loader, desc=desc, disable=None if progress and rank == 0 else True, leave=False)
    for positions, (images, _, index) in zip(batches, bar):
        # channels_last: the same values, about 2x faster convolutions on a CPU (1.7 vs 3.2 s for a
        # convnet4's activations of 5,000 CIFAR images, one thread) and no slower on a GPU
        out = _to_numpy(fn(images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)))
        if sink is not None:
            sink(np.asarray(positions, dtype=np.int64), out)
            continue
        for k, v in out.items():
            chunks.setdefault(k, []).append(v)
        keys.append(index.numpy())
    if sink is not None:
        return np.asarray(dataset.keys, dtype=np.int64).copy(), {}
    local_index = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    local_out = {k: np.concatenate(v) for k, v in chunks.items()}
    index, outs = _gather(local_index, local_out, world)
    # De-duplicate on the key and restore the dataset's order.
    want = np.asarray(dataset.keys, dtype=np.int64)
    first = {}
    for i, k in enumerate(index.tolist()):
        first.setdefault(k, i)
    missing = [int(k) for k in want if int(k) not in first]
    if missing:
        raise RuntimeError(f"{desc}: no output for {len(missing)} indices (first: {missing[:5]})")
    order = np.asarray([first[int(k)] for k in want], dtype=np.int64)
    return want.copy(), {k: v[order] for k, v in outs.items()}


def embed_dataset(
    backbone: torch.nn.Module,
    dataset,
    *,
    batch_size: int = 256,
    image_size: int | None = None,
    accelerator=None,
    normalize: bool = False,
    cache_path: str | os.PathLike | None = None,
    progress: bool = True,
    out_path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features ``(keys, features (N, D) float32)`` for every image.

    Args:
        backbone, dataset: the encoder (run in eval mode) and the images (keys index the rows).
        batch_size, image_size: images per forward pass; resize to this side (``None``: as stored).
        accelerator: several processes share the batches (every process must call this).
        normalize: L2-normalise the rows (what cosine k-means and kNN use).
        cache_path: an ``.npz`` cache: a valid one (same keys) is reused, a new one is written atomically
            by the main process. Not combined with ``out_path``.
        progress: a progress bar on a terminal.
        out_path: stream the features into this ``.npy`` file instead of memory: each batch is written
            at its rows through a memory map of a temporary file beside it, renamed onto ``out_path``
            when complete (:class:`sslguard.utils.io.NpyRowWriter`); the features returned are then
            ``np.load(out_path, mmap_mode="r")`` (read-only), and the file's bytes equal ``np.save`` of
            the in-memory result. With several processes each writes its own batches into the same
            file, so ``out_path`` must be on a file system they share.

    Limits: without ``out_path`` the whole matrix is held in memory (and, with several processes, on
    every one of them).
    """
    if out_path is not None and cache_path is not None:
        raise ValueError("embed_dataset: give cache_path or out_path, not both")
    if cache_path is not None and Path(cache_path).exists():
        try:
            with np.load(cache_path) as z:
                index, feats = z["index"], z["features"]
            if np.array_equal(index, np.asarray(dataset.keys)):
                return index, feats
            log.warning("%s was made for other indices; recomputing", cache_path)
        except Exception as exc:  # a damaged cache is recomputed, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache_path, exc)
    was_training = backbone.training
    backbone.eval()

    def fn(images: torch.Tensor) -> torch.Tensor:
        f = backbone(to_float(images))
        return torch.nn.functional.normalize(f, dim=1) if normalize else f

    try:
        if out_path is not None:
            return _embed_to_file(fn, dataset, Path(out_path), batch_size=batch_size, image_size=image_size,
                                  accelerator=accelerator, progress=progress)
        index, outs = extract(dataset, fn, batch_size=batch_size, image_size=image_size, accelerator=accelerator,
                              desc="embedding", progress=progress)
    finally:
        backbone.train(was_training)
    feats = outs["features"].astype(np.float32)
    if cache_path is not None and (accelerator is None or accelerator.is_main_process):
        with atomic_path(cache_path, suffix=".npz") as tmp:
            np.savez(tmp, index=index, features=feats)
    return index, feats


@torch.no_grad()
def _embed_to_file(fn, dataset, path: Path, *, batch_size, image_size, accelerator, progress):
    """:func:`embed_dataset` with ``out_path``: the main process sizes and creates the temporary file (one
    image through ``fn`` gives the width), every process writes its batches, the main one commits."""
    rank, world, device = _dist_info(accelerator)
    n = len(dataset)
    if n == 0:
        raise ValueError("embed_dataset: no images to embed")
    # a name every process knows; with one process a fresh one (two runs never share it)
    tmp = path.with_name(f".{path.name}.partial.npy") if world > 1 else None
    writer = None
    if rank == 0:
        probe = _items(dataset, image_size)[0][0][None].to(device).contiguous(memory_format=torch.channels_last)
        width = _to_numpy(fn(probe))["features"].shape[1:]
        writer = NpyRowWriter(path, (n, *width), np.float32, tmp=tmp)
    if world > 1:
        accelerator.wait_for_everyone()
        if rank != 0:
            writer = NpyRowWriter(path, tmp=tmp, create=False)
    try:
        keys, _ = extract(dataset, fn, batch_size=batch_size, image_size=image_size, accelerator=accelerator,
                          desc="embedding", progress=progress,
                          sink=lambda pos, out: writer.write(pos, out["features"]))
        writer.close()
        if world > 1:
            accelerator.wait_for_everyone()
        if rank == 0:
            writer.commit()
    except BaseException:
        if rank == 0:
            writer.abort()
        raise
    if world > 1:
        accelerator.wait_for_everyone()
    return keys, np.load(path, mmap_mode="r")
