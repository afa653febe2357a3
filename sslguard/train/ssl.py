"""SSL pretraining loop (SimCLR, Chen et al. 2020; BYOL, Grill et al. 2020) on one CPU or many GPUs.

:func:`train_ssl` runs the same code as plain ``python`` on one CPU and under ``accelerate launch``
on many processes: ``accelerate`` wraps the model for DDP, handles mixed precision and gives
main-process-only logging and saving. Batches arrive as ``uint8`` and are augmented on the device
(:mod:`sslguard.train.augment`), two views per image.

Choices and why:

- ``batch_size`` is the *global* batch (summed over processes), so a config means the same run on
  any number of processes; each process gets ``batch_size // num_processes`` images. SimCLR's loss
  gathers projections across processes, so its negatives are the global batch.
- Optimizer: SGD, momentum 0.9, weight decay 5e-4, ``lr = 0.06 * batch_size / 256``, linear warmup
  then cosine decay per step (lightly's ``CosineWarmupScheduler``). This is the recipe of lightly's
  CIFAR-10 benchmarks at batch 128-512; LARS (``optimizer="lars"``) only pays off at the 4k batches
  of the papers, and Adam(W) (``"adamw"``, lr 1e-3 * bs/256) is offered for tiny or unstable runs.
- Data order and views, the same at any process count: each epoch is one permutation of the images
  seeded by ``(seed, epoch)``, cut into global batches; process ``r`` of ``P`` takes the ``r``-th
  contiguous slice of each global batch, so the processes' slices, in rank order, are the one-process
  batch. Each view of each image is augmented from its own random stream keyed by ``(seed, epoch,
  image position, view)`` (:func:`sslguard.train.augment.view_keys`), so an image gets the same two
  views whichever process augments it. Both depend only on the epoch, so a run resumed from an epoch
  checkpoint replays exactly what the uninterrupted run would have done.
- Checkpoints (every ``checkpoint_every`` epochs and at the end) hold model (incl. BYOL's momentum
  network), optimizer, scheduler, grad scaler, RNG states, epoch, step and history; written
  atomically and read with ``torch.load(weights_only=True)`` (plain tensors and numbers only).

Invariant across process counts: which images make up each global step and in what order, their
augmented views (bit-identical), SimCLR's negatives (the loss gathers the global batch), the
learning-rate and momentum schedules and the global batch size. Not invariant: (1) BatchNorm
statistics are per process (each normalises over its own slice; the model is not converted to
SyncBatchNorm), which changes losses and weights by an amount that grows as the slice shrinks, and the
running statistics the encoder keeps for evaluation are rank 0's (DDP broadcasts its buffers), estimated
from its slices only; (2) DDP's gradient all-reduce and the gathered loss sum in another order than one
process does (float rounding, around 1e-7 relative, which training can amplify over many steps). With
per-sample normalisation instead of BatchNorm, 1 and 2 processes give the same loss curve and weights to
float rounding (tests/train/test_process_invariance.py).

Limits: resume is at epoch granularity (a crash mid-epoch repeats that epoch); a checkpoint resumes
only at the process count that wrote it; the kNN monitor runs on the main process only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslguard.data.transforms import ResizeUint8, TransformDataset, collate_uint8
from sslguard.models.ssl import BYOL, save_backbone
from sslguard.train.augment import BatchAugment, ssl_augmentations, two_views, view_keys
from sslguard.utils.io import atomic_path, atomic_write_json
from sslguard.utils.seed import rng_state, set_rng_state
from sslguard.knn import extract_features, knn_accuracy

log = logging.getLogger(__name__)


CHECKPOINT_FORMAT = "sslguard-ssl-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
ENCODER_NAME = "encoder.safetensors"
OPTIMIZERS = ("sgd", "adamw", "lars")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class SSLTrainResult:
    """What :func:`train_ssl` did: per-epoch history, kNN monitor, timing and the files it wrote."""

    epochs: int
    start_epoch: int  # epoch this call started from (> 0 when it resumed)
    global_step: int
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch, resumed ones included
    seconds: float = 0.0  # training time of this call (kNN and checkpoints excluded)
    images_per_second: float = 0.0  # global images (one image = two views) per second in this call
    output_dir: Path | None = None
    encoder_path: Path | None = None
    checkpoint_path: Path | None = None

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history]

    @property
    def knn(self) -> list[tuple[int, float]]:
        return [(int(r["epoch"]), r["knn_top1"]) for r in self.history if "knn_top1" in r]

    @property
    def final_knn(self) -> float | None:
        k = self.knn
        return k[-1][1] if k else None


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 bf16 or AMX); measured here on an AVX2-only
    EPYC, bf16 autocast ran a convnet4 SimCLR step about 7x slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.backends.cpu.get_cpu_capability() != "DEFAULT"  # unknown OS: do not warn on a guess
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_lr(optimizer: str, batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017) from a per-256-images base rate."""
    base = {"sgd": 0.06, "lars": 0.3, "adamw": 1e-3}[optimizer]
    return base * batch_size / 256


def _build_optimizer(name: str, params, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    # fused (one kernel for all parameters) on a GPU; on a CPU the default keeps earlier runs' numbers
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **extra)
    if name == "lars":
        from lightly.utils.lars import LARS

        return LARS(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"ssl.optimizer: unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def _epoch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (tensors and plain values only; no arbitrary objects are unpickled)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an sslguard SSL checkpoint")
    return ckpt


def _preload(dataset, image_size: int | None, device: torch.device, num_workers: int = 0) -> torch.Tensor:
    """The whole ``dataset`` as one ``uint8`` ``(N, 3, H, W)`` tensor on ``device``, in position order,
    made by the same resize and collate as the training loader (so the pixels are the loader's)."""
    loader = DataLoader(TransformDataset(dataset, ResizeUint8(image_size)), batch_size=1024, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_uint8)
    return torch.cat([images for images, _, _ in loader]).to(device)


@dataclass
class _SSLRun:
    """Settings, prepared objects and loop state shared by the steps of one :func:`train_ssl` call."""

    acc: Any  # the accelerate.Accelerator
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped under several processes)
    raw: torch.nn.Module  # the unwrapped model: state dicts, backbone, BYOL momentum update
    opt: torch.optim.Optimizer
    sched: Any  # lightly's CosineWarmupScheduler, stepped once per global step (not prepared by accelerate)
    aug0: BatchAugment
    aug1: BatchAugment
    method: str
    epochs: int
    batch_size: int  # global batch
    per_proc: int  # images per process and step
    steps_per_epoch: int
    total_steps: int
    lr: float
    seed: int
    image_size: int | None
    channels_last: bool
    progress: bool
    checkpoint_every: int
    knn_every: int
    knn_train: Any
    knn_test: Any
    knn_k: int
    knn_t: float
    fingerprint: dict[str, Any]
    out: Path | None
    ckpt_path: Path | None
    forward: Any = None  # the model's forward, compiled with ``compile``
    views: Any = None  # (images, params0, params1) -> the two augmented views, compiled with ``compile``
    start_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0


def _check_arguments(model, epochs: int, batch_size: int, schedule_epochs: int | None, mixed_precision: str,
                     checkpoint_every: int, knn_every: int, knn_train, knn_test) -> tuple[str, int]:
    """Refuse bad arguments (naming the config key); return the model's method and the schedule length."""
    if epochs < 0:
        raise ValueError(f"ssl.epochs: must be >= 0, got {epochs}")
    if batch_size <= 0:
        raise ValueError(f"ssl.batch_size: must be positive, got {batch_size}")
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"ssl.mixed_precision: must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    if checkpoint_every < 0 or knn_every < 0:
        raise ValueError("ssl.checkpoint_every and ssl.knn_every must be >= 0")
    method = getattr(model, "method", None)
    if method not in ("simclr", "byol"):
        raise ValueError("train_ssl: model must be a SimCLR or BYOL model (see sslguard.models.ssl.build_ssl_model)")
    if knn_every and (knn_train is None or knn_test is None):
        raise ValueError("ssl.knn_every > 0 needs knn_train and knn_test datasets")
    schedule_epochs = epochs if schedule_epochs is None else int(schedule_epochs)
    if schedule_epochs < epochs:
        raise ValueError(f"schedule_epochs ({schedule_epochs}) must be >= epochs ({epochs})")
    return method, schedule_epochs


def _split_batch(dataset, batch_size: int, world: int) -> tuple[int, int]:
    """Per-process batch and steps per epoch of the global ``batch_size`` over ``world`` processes."""
    if batch_size % world:
        raise ValueError(f"ssl.batch_size: {batch_size} is not divisible by the {world} processes")
    per_proc = batch_size // world
    steps_per_epoch = len(dataset) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"ssl.batch_size: {batch_size} is larger than the dataset ({len(dataset)} images); "
                         "lower it (batches are drop_last)")
    return per_proc, steps_per_epoch


def _setup_run(model, dataset, accelerator, *, method, epochs, batch_size, lr, weight_decay, optimizer, warmup_epochs,
               schedule_epochs, image_size, augment, output_dir, seed, mixed_precision, channels_last, progress,
               checkpoint_every, knn_every, knn_train, knn_test, knn_k, knn_t, compile_: bool = False) -> _SSLRun:
    """Accelerator, batch split, run fingerprint, seeding, augmentations, optimizer and scheduler."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from lightly.utils.scheduler import CosineWarmupScheduler

    acc = accelerator if accelerator is not None else Accelerator(mixed_precision=mixed_precision,
                                                                   cpu=not torch.cuda.is_available())
    world = acc.num_processes
    per_proc, steps_per_epoch = _split_batch(dataset, batch_size, world)
    total_steps = steps_per_epoch * schedule_epochs
    lr = default_lr(optimizer, batch_size) if lr is None else float(lr)
    out = Path(output_dir) if output_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    fingerprint = {"method": method, "backbone": model.backbone.backbone_name, "batch_size": batch_size, "lr": lr,
                   "weight_decay": weight_decay, "optimizer": optimizer, "schedule_epochs": schedule_epochs,
                   "warmup_epochs": float(warmup_epochs), "seed": seed, "n_images": len(dataset),
                   "image_size": image_size if image_size is not None else -1, "num_processes": world}

    set_seed(seed)
    if augment is None:
        size = image_size if image_size is not None else int(np.asarray(dataset.load_array(0)).shape[0])
        augment = ssl_augmentations(method, size)
    aug0, aug1 = augment
    # The views' distributions belong to the run: resuming under other crops or jitter would mix two runs.
    fingerprint["augment"] = f"{aug0!r} | {aug1!r}"
    if mixed_precision == "bf16" and acc.device.type == "cpu" and not _cpu_has_native_bf16():
        log.warning("ssl.mixed_precision=bf16 on a CPU without AVX-512/AMX bf16 (%s): autocast emulates bf16 "
                    "and is usually several times slower than fp32 here; consider mixed_precision=no",
                    torch.backends.cpu.get_cpu_capability())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _build_optimizer(optimizer, params, lr, weight_decay, fused=acc.device.type == "cuda")
    sched = CosineWarmupScheduler(opt, warmup_epochs=int(round(warmup_epochs * steps_per_epoch)),
                                  max_epochs=total_steps, start_value=1.0, end_value=0.0)
    model, opt = acc.prepare(model, opt)
    # The scheduler stays unprepared: accelerate would step it num_processes times per step, which
    # suits per-process batch sizes; ours counts global steps.
    raw = acc.unwrap_model(model)
    forward, views = model, two_views(aug0, aug1, channels_last)
    if compile_:
        # torch.compile (inductor) fuses the many small kernels of a 32 px step (BatchNorm, ReLU, the
        # augmentations' elementwise ops); the first steps pay the compilation. Shapes are static
        # (batches are drop_last), so one graph serves the whole run.
        views = two_views(aug0, aug1, channels_last, masked=True)
        forward, views = torch.compile(model, dynamic=False), torch.compile(views, dynamic=False)
    return _SSLRun(
        acc=acc, model=model, raw=raw, opt=opt, sched=sched, aug0=aug0, aug1=aug1, method=method, epochs=epochs,
        batch_size=batch_size, per_proc=per_proc, steps_per_epoch=steps_per_epoch, total_steps=total_steps, lr=lr,
        seed=seed, image_size=image_size, channels_last=channels_last, progress=progress,
        checkpoint_every=checkpoint_every, knn_every=knn_every, knn_train=knn_train, knn_test=knn_test, knn_k=knn_k,
        knn_t=knn_t, fingerprint=fingerprint, out=out, ckpt_path=ckpt_path, forward=forward, views=views,
    )


def _resume_from_checkpoint(run: _SSLRun, resume: bool) -> None:
    """With ``resume``, continue from a matching checkpoint in the output directory (other settings: an error)."""
    ckpt_path = run.ckpt_path
    if not (resume and ckpt_path is not None and ckpt_path.exists()):
        return
    ckpt = load_checkpoint(ckpt_path)
    # keys a checkpoint predates (older versions wrote fewer) are not held against it
    diff = {k: (ckpt["fingerprint"].get(k), v) for k, v in run.fingerprint.items()
            if k in ckpt["fingerprint"] and ckpt["fingerprint"][k] != v}
    if diff:
        raise ValueError(f"{ckpt_path}: written by a run with other settings {diff} (checkpoint, now); "
                         "use another output_dir or resume=False")
    run.raw.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") is not None and run.acc.scaler is not None:
        run.acc.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.start_epoch, run.global_step, run.history = int(ckpt["epoch"]), int(ckpt["global_step"]), list(ckpt["history"])
    if run.acc.is_main_process:
        log.info("resumed from %s at epoch %d", ckpt_path, run.start_epoch)


def _save_checkpoint(run: _SSLRun, epoch: int) -> None:
    """Write the checkpoint after ``epoch`` epochs atomically (main process; every process waits)."""
    if run.ckpt_path is None:
        return
    acc = run.acc
    if acc.is_main_process:
        state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "global_step": run.global_step,
                 "model": run.raw.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
                 "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                 "rng": rng_state(), "history": run.history, "fingerprint": run.fingerprint}
        with atomic_path(run.ckpt_path, suffix=".pt") as tmp:
            torch.save(state, tmp)
    acc.wait_for_everyone()


def _evaluate_knn(run: _SSLRun) -> float | None:
    """Weighted kNN top-1 of the backbone's features on the kNN splits (main process; others get ``None``)."""
    acc = run.acc
    value = None
    if acc.is_main_process:
        kw = dict(batch_size=max(run.per_proc, 64), image_size=run.image_size, device=acc.device,
                  mean=run.aug0.mean, std=run.aug0.std, channels_last=run.channels_last)
        with acc.autocast():
            ftr, ltr, _ = extract_features(run.raw.backbone, run.knn_train, **kw)
            fte, lte, _ = extract_features(run.raw.backbone, run.knn_test, **kw)
        value = knn_accuracy(ftr, ltr, fte, lte, k=run.knn_k, t=run.knn_t)
    acc.wait_for_everyone()
    return value


def epoch_batches(seed: int, epoch: int, n_images: int, batch_size: int, world: int = 1,
                  rank: int = 0) -> torch.Tensor:
    """``(steps, batch_size // world)`` image positions that process ``rank`` of ``world`` trains on in
    ``epoch``: one permutation of ``n_images`` seeded by ``(seed, epoch)``, cut into ``len // batch_size``
    global batches (the rest is dropped), of which this process takes the ``rank``-th contiguous slice.
    The slices of all ranks, concatenated in rank order, are the one-process batches."""
    if batch_size % world or not 0 <= rank < world:
        raise ValueError(f"epoch_batches: batch_size {batch_size} over {world} processes, rank {rank}")
    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    steps, per_proc = n_images // batch_size, batch_size // world
    order = torch.randperm(n_images, generator=gen)[: steps * batch_size].view(steps, world, per_proc)
    return order[:, rank]


class _EpochBatchSampler:
    """Batch sampler of :func:`epoch_batches` for one process; :meth:`set_epoch` picks the epoch."""

    def __init__(self, seed: int, n_images: int, batch_size: int, world: int, rank: int):
        self.seed, self.n_images, self.batch_size, self.world, self.rank = seed, n_images, batch_size, world, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_images // self.batch_size

    def __iter__(self):
        batches = epoch_batches(self.seed, self.epoch, self.n_images, self.batch_size, self.world, self.rank)
        return iter(batches.tolist())


class _PositionedDataset(Dataset):
    """``(uint8 image, label, position)`` items: positions in the training set key the views, as they
    are what the batch sampler draws and all the preloaded path knows of an image."""

    def __init__(self, dataset, image_size: int | None):
        self.inner = TransformDataset(dataset, ResizeUint8(image_size))

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, pos):
        img, label, _ = self.inner[pos]
        return img, label, pos


def _prepare_loader(run: _SSLRun, dataset, num_workers: int) -> DataLoader:
    """The training loader: this process's slices of each epoch's global batches (:func:`epoch_batches`)."""
    acc = run.acc
    batches = _EpochBatchSampler(run.seed, len(dataset), run.batch_size, acc.num_processes, acc.process_index)
    return DataLoader(
        _PositionedDataset(dataset, run.image_size), batch_sampler=batches, num_workers=num_workers,
        collate_fn=collate_uint8, persistent_workers=num_workers > 0, pin_memory=acc.device.type == "cuda",
    )


def _epoch_batches(run: _SSLRun, loader: DataLoader, resident: torch.Tensor | None):
    """The epoch's ``(images, labels, positions)`` batches: the loader's, or the same positions indexed
    from the preloaded corpus (the epoch's positions go to the device in one copy: a copy per step would
    make the host wait for the GPU every step)."""
    if resident is None:
        return loader
    sampler = loader.batch_sampler
    batches = epoch_batches(run.seed, sampler.epoch, sampler.n_images, run.batch_size, sampler.world, sampler.rank)
    on_device = batches.to(resident.device)
    return ((resident[on_device[i]], None, b) for i, b in enumerate(batches))


def _train_step(run: _SSLRun, images: torch.Tensor, positions: torch.Tensor, epoch: int) -> torch.Tensor:
    """Augment two views of ``images`` (keyed by their ``positions``), take one optimizer and scheduler
    step; returns the loss."""
    acc = run.acc
    x = images.to(acc.device, non_blocking=True)
    n, _, h, w = x.shape
    p0 = run.aug0.sample(n, h, w, keys=view_keys(run.seed, epoch, positions, 0)).to(acc.device)
    p1 = run.aug1.sample(n, h, w, keys=view_keys(run.seed, epoch, positions, 1)).to(acc.device)
    v0, v1 = run.views(x, p0, p1)
    with acc.autocast():
        loss = run.forward(v0, v1)
    run.opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    run.opt.step()
    run.sched.step()
    if isinstance(run.raw, BYOL):
        run.raw.update_momentum(run.global_step, run.total_steps)
    run.global_step += 1
    return loss


def _run_epoch(run: _SSLRun, epoch: int, loader: DataLoader, resident: torch.Tensor | None) -> dict[str, float]:
    """Train epoch ``epoch`` (0-based); returns its history record (epoch, loss, lr, seconds)."""
    from tqdm.auto import tqdm

    acc = run.acc
    loader.batch_sampler.set_epoch(epoch)
    loss_sum = torch.zeros((), device=acc.device)
    t0 = time.perf_counter()
    batches = _epoch_batches(run, loader, resident)
    bar = tqdm(batches, total=run.steps_per_epoch, desc=f"{run.method} epoch {epoch + 1}/{run.epochs}", leave=False,
               disable=None if run.progress and acc.is_main_process else True)
    for images, _, positions in bar:
        loss = _train_step(run, images, positions, epoch)
        loss_sum += loss.detach().float()
        # .item() waits for the GPU: only when a bar is shown, every 10 steps
        if not bar.disable and run.global_step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    if acc.device.type == "cuda":
        torch.cuda.synchronize(acc.device)
    run.train_seconds += time.perf_counter() - t0
    run.images_seen += run.steps_per_epoch * run.batch_size
    mean_loss = float(acc.reduce(loss_sum, reduction="mean")) / run.steps_per_epoch
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"epoch {epoch + 1}: loss is {mean_loss}; lower ssl.lr or use mixed_precision=no")
    return {"epoch": epoch + 1, "loss": mean_loss, "lr": float(run.sched.get_last_lr()[0]),
            "seconds": time.perf_counter() - t0}


def _end_epoch(run: _SSLRun, epoch: int, record: dict[str, float],
               on_epoch_end: Callable[[int, dict[str, float]], None] | None) -> None:
    """After epoch ``epoch`` (0-based): kNN monitor, history, log line, checkpoint, then the user's hook."""
    from tqdm.auto import tqdm

    if run.knn_every and ((epoch + 1) % run.knn_every == 0 or epoch + 1 == run.epochs):
        top1 = _evaluate_knn(run)
        if top1 is not None:
            record["knn_top1"] = top1
    run.history.append(record)
    if run.acc.is_main_process:
        msg = f"epoch {epoch + 1}/{run.epochs} loss {record['loss']:.4f} lr {record['lr']:.4g}"
        if "knn_top1" in record:
            msg += f" knn@{run.knn_k} {record['knn_top1']:.4f}"
        log.info(msg)
        if run.progress:
            tqdm.write(msg)
    if run.checkpoint_every and ((epoch + 1) % run.checkpoint_every == 0 or epoch + 1 == run.epochs):
        _save_checkpoint(run, epoch + 1)
    if on_epoch_end is not None:
        on_epoch_end(epoch + 1, record)


def _export_encoder(run: _SSLRun, optimizer: str, meta: dict[str, Any] | None) -> Path | None:
    """Write ``encoder.safetensors`` (backbone and metadata) and ``history.json`` when there is an output directory."""
    if run.out is None:
        return None
    encoder_path = run.out / ENCODER_NAME
    history = run.history
    if run.acc.is_main_process:
        emeta = {"method": run.method, "epochs": int(history[-1]["epoch"]) if history else 0,
                 "image_size": run.image_size, "mean": list(run.aug0.mean), "std": list(run.aug0.std),
                 "seed": run.seed, "batch_size": run.batch_size, "lr": run.lr, "optimizer": optimizer}
        if history and "knn_top1" in history[-1]:
            emeta["knn_top1"] = history[-1]["knn_top1"]
        emeta.update(meta or {})
        save_backbone(encoder_path, run.raw.backbone, emeta)
        atomic_write_json(run.out / "history.json", history)
    run.acc.wait_for_everyone()
    return encoder_path


def train_ssl(
    model: torch.nn.Module,
    dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    optimizer: str = "sgd",
    warmup_epochs: float = 0.0,
    schedule_epochs: int | None = None,
    image_size: int | None = 32,
    augment: tuple[BatchAugment, BatchAugment] | None = None,
    output_dir: str | os.PathLike | None = None,
    seed: int = 0,
    mixed_precision: str = "no",
    channels_last: bool = False,
    checkpoint_every: int = 1,
    resume: bool = True,
    knn_every: int = 0,
    knn_train=None,
    knn_test=None,
    knn_k: int = 200,
    knn_t: float = 0.1,
    num_workers: int = 0,
    preload: bool = False,
    accelerator=None,
    progress: bool = True,
    compile: bool = False,
    meta: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> SSLTrainResult:
    """Train ``model`` (:class:`~sslguard.models.ssl.SimCLR` or :class:`~sslguard.models.ssl.BYOL`) on ``dataset``.

    ``dataset`` yields ``(PIL image, label, index)``; images are resized to ``image_size`` (``None``:
    all already share one size) and augmented on the device with ``augment`` (default:
    :func:`ssl_augmentations` for the model's method). ``lr`` defaults to :func:`default_lr`.
    ``schedule_epochs`` (default ``epochs``) is the length of the LR and momentum schedules: set it
    larger than ``epochs`` to train the first part of a longer run, which a later call resumes.

    With ``output_dir``: a checkpoint every ``checkpoint_every`` epochs and at the end
    (``checkpoint.pt``), ``encoder.safetensors`` (backbone only, :func:`save_backbone`) and
    ``history.json``; with ``resume`` a matching checkpoint there is continued (one written with other
    settings is an error). ``knn_every > 0`` with ``knn_train``/``knn_test`` (labeled datasets) logs
    weighted kNN top-1 (:func:`sslguard.knn.knn_accuracy`) every that many epochs and at the end.
    ``on_epoch_end(epoch, record)`` is called on every process after each epoch's checkpoint.
    ``batch_size`` is global; each epoch's batches (:func:`epoch_batches`) and every image's views depend
    on ``seed``, the epoch and the image's position in ``dataset``, not on the number of processes.

    ``preload`` decodes the corpus once into one ``uint8`` tensor on the device and draws each batch
    from it by index (same sampler order, so the same batches and weights as the loader path): for
    small-image corpora (CIFAR-10 is 150 MB) on a GPU, where per-image loading would otherwise
    bound the step. Large-image corpora (ImageNet-100 at 224 px is ~19 GB) should stream instead.

    ``compile`` runs the model and the augmentations through ``torch.compile``: on a GPU at 32 px the
    step is bound by kernel launches, not arithmetic, and fusing them is what makes it faster
    (``benchmarks/gpu.md``); on a CPU, or for one short run, the compilation (a minute or more) costs
    more than it saves.
    """
    method, schedule_epochs = _check_arguments(model, epochs, batch_size, schedule_epochs, mixed_precision,
                                               checkpoint_every, knn_every, knn_train, knn_test)
    run = _setup_run(
        model, dataset, accelerator, method=method, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, optimizer=optimizer, warmup_epochs=warmup_epochs, schedule_epochs=schedule_epochs,
        image_size=image_size, augment=augment, output_dir=output_dir, seed=seed, mixed_precision=mixed_precision,
        channels_last=channels_last, progress=progress, checkpoint_every=checkpoint_every, knn_every=knn_every,
        knn_train=knn_train, knn_test=knn_test, knn_k=knn_k, knn_t=knn_t, compile_=compile,
    )
    _resume_from_checkpoint(run, resume)
    loader = _prepare_loader(run, dataset, num_workers)
    resident = _preload(dataset, image_size, run.acc.device, num_workers) if preload else None
    run.model.train()
    for epoch in range(run.start_epoch, epochs):
        record = _run_epoch(run, epoch, loader, resident)
        _end_epoch(run, epoch, record, on_epoch_end)
    encoder_path = _export_encoder(run, optimizer, meta)
    ckpt_path = run.ckpt_path
    return SSLTrainResult(
        epochs=epochs, start_epoch=run.start_epoch, global_step=run.global_step, history=run.history,
        seconds=run.train_seconds,
        images_per_second=run.images_seen / run.train_seconds if run.train_seconds > 0 else 0.0, output_dir=run.out,
        encoder_path=encoder_path, checkpoint_path=ckpt_path if ckpt_path is not None and ckpt_path.exists() else None,
    )
