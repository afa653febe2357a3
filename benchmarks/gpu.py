"""A backdoored reference encoder trained on a lent GPU, and the CIFAR-10 pack that travels to it.

The device machine takes at most 64 MiB of working tree and has no ``../shared``. CIFAR-10 as decoded
``uint8`` is 150 MB, but its JPEG copy's training images are 44 MiB of JPEG bytes: :func:`pack_cifar10`
writes those bytes (all 50,000 training images and a seeded sample of the test split) into one
``.npz``, and :func:`load_packed_cifar10` decodes them there with the same PIL call as
:func:`sslguard.data.load_cifar10`, so both machines see the same pixels and, with the same seed,
the same poisons (the poisoning is :func:`benchmarks.detect.poisoned_cifar10`'s).

:func:`train_reference_encoder` then trains for a wall-clock budget: a short probe run measures the
step time, the epoch count is chosen to fit the budget (the cosine schedule needs it up front), and a
hard limit stops training at an epoch boundary, keeping the last checkpoint's encoder, if the probe
was optimistic. It writes the encoder as fp16 safetensors (halving its size; the CPU loads it into
fp32), split into parts that fit the device tool's 16 MiB per returned file, with the kNN accuracy
and whether the encoder learned the backdoor (:func:`benchmarks.detect.backdoor_learned`).

``epochs`` fixes the epoch count instead (no probe; ``compile`` compiles the step once): the run restarts
once with fewer epochs if its first epochs say the count won't fit. What ran on the H200 and its numbers:
``benchmarks/gpu.md``.

Limits: the test split is a sample (``n_test``), so the device's kNN accuracy and target rates are
over fewer images than the CPU benchmark's; GPU utilisation is sampled with ``nvidia-smi`` once a
second when it is on the PATH.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from sslguard.utils.io import atomic_path, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB


def pack_cifar10(path: str | os.PathLike, *, root: str | os.PathLike | None = None, n_test: int = 2000,
                 train_positions: Optional[Sequence[int]] = None, seed: int = 0) -> Path:
    """Write CIFAR-10's JPEG bytes to ``path`` (``.npz``): every training image (or ``train_positions``)
    and a seeded sample of ``n_test`` test images, keyed by their canonical index."""
    from sslguard.data.datasets import find_cifar10_root

    root_path = Path(root) if root is not None else find_cifar10_root()
    if root_path is None or not (root_path / "cifar10-jpeg.zip").exists():
        raise FileNotFoundError(f"CIFAR-10 JPEG copy not found (root={root!r}); it needs cifar10-jpeg.zip and "
                                "cifar10-jpeg-index.csv")
    rows: dict[str, dict[int, tuple[str, int]]] = {"train": {}, "test": {}}
    with open(root_path / "cifar10-jpeg-index.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rows[row["split"]][int(row["orig_index"])] = (row["path"], int(row["label"]))
    rng = np.random.default_rng([seed, 11])
    test_keys = np.sort(rng.choice(len(rows["test"]), size=min(n_test, len(rows["test"])), replace=False))
    train_keys = np.arange(len(rows["train"])) if train_positions is None else np.sort(np.asarray(train_positions))
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(root_path / "cifar10-jpeg.zip") as zf:
        for split, keys in (("train", train_keys), ("test", test_keys)):
            blobs = [zf.read(rows[split][int(k)][0]) for k in keys]
            arrays[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
            arrays[f"{split}_labels"] = np.asarray([rows[split][int(k)][1] for k in keys], np.int64)
            arrays[f"{split}_keys"] = np.asarray(keys, np.int64)
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def load_packed_cifar10(path: str | os.PathLike):
    """``(train, test)`` :class:`~sslguard.data.datasets.ArrayDataset` from a :func:`pack_cifar10` file,
    keys = canonical CIFAR-10 indices."""
    from PIL import Image

    from sslguard.data.datasets import CIFAR10_CLASSES, ArrayDataset

    out = []
    with np.load(path) as z:
        for split in ("train", "test"):
            data, off = z[f"{split}_bytes"].tobytes(), z[f"{split}_offsets"]
            # the same call as load_cifar10's JPEG path, so the pixels match the CPU's
            images = np.stack([np.asarray(Image.open(io.BytesIO(data[off[i]:off[i + 1]])).convert("RGB"))
                               for i in range(len(off) - 1)])
            out.append(ArrayDataset(images, z[f"{split}_labels"], CIFAR10_CLASSES, keys=z[f"{split}_keys"]))
    return out[0], out[1]


def split_file(path: str | os.PathLike, part_bytes: int = PART_BYTES) -> list[Path]:
    """Cut ``path`` into ``<name>.part00``, ``.part01``... of at most ``part_bytes`` (rejoin with ``cat``)."""
    path = Path(path)
    data = path.read_bytes()
    parts = []
    for i, s in enumerate(range(0, len(data), part_bytes)):
        p = path.with_name(f"{path.name}.part{i:02d}")
        p.write_bytes(data[s:s + part_bytes])
        parts.append(p)
    return parts


def export_fp16(net: torch.nn.Module, dst: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Save the backbone ``net`` with fp16 floating tensors (integer buffers kept; ``net`` is converted
    in place) and its ``encoder_meta`` (if loaded from a file) updated by ``meta``."""
    from sslguard.models.ssl import save_backbone

    emeta = {**dict(getattr(net, "encoder_meta", {}) or {}), **(meta or {}), "dtype": "float16"}
    for k in ("format", "sha256"):
        emeta.pop(k, None)
    return save_backbone(dst, net.half(), emeta)


class _GpuSampler:
    """``nvidia-smi`` utilisation and memory once a second while alive (nothing when it is absent)."""

    def __init__(self, path: Path):
        self.path, self.proc = path, None
        if torch.cuda.is_available() and shutil.which("nvidia-smi"):
            self.fh = open(path, "w")
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "1000"], stdout=self.fh,
                                         stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, float] | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.fh.close()
        vals = []
        for line in self.path.read_text().splitlines():
            try:
                u, m = (float(v) for v in line.split(","))
                vals.append((u, m))
            except ValueError:
                continue
        if not vals:
            return None
        u = np.array([v[0] for v in vals])
        return {"samples": len(vals), "util_mean": float(u.mean()), "util_median": float(np.median(u)),
                "mem_used_max_mib": float(max(v[1] for v in vals))}


class _OutOfTime(RuntimeError):
    pass


class _Replan(RuntimeError):
    def __init__(self, epochs: int, reason: str):
        super().__init__(reason)
        self.epochs = epochs


def train_reference_encoder(pack: str | os.PathLike, out_dir: str | os.PathLike, *, setting: str = "htba_50",
                            method: str = "byol", backbone: str = "cifar_resnet18", width: int = 64,
                            batch_size: int = 512, budget_s: float = 300.0, hard_limit_s: float | None = None,
                            max_epochs: int = 400, min_scale: float = 0.2, mixed_precision: str = "bf16",
                            channels_last: bool = True, target: int = 0, seed: int = 0, probe_steps: int = 30,
                            name: str | None = None, work_dir: str | os.PathLike | None = None,
                            epochs: int | None = None, compile: bool = False,
                            check_epoch: int = 3) -> dict[str, Any]:
    """Poison the packed CIFAR-10 training set with ``setting`` (as the CPU benchmark does), train a
    ``method`` encoder for about ``budget_s`` seconds on the available device (with the CPU benchmark's
    :func:`benchmarks.detect.train_encoder`, i.e. the product's
    :func:`sslguard.pipeline.encoder.train_encoder`), and write to ``out_dir``
    only what should travel back (few, small files): the fp16 encoder's ``<name>.safetensors.partNN``
    pieces, ``<name>.json`` (recipe, epochs, img/s, GPU utilisation, kNN accuracy, target rates,
    sha256), the training history and the ``nvidia-smi`` samples. Checkpoints and the whole
    ``<name>.safetensors`` stay in ``work_dir`` (default ``out_dir/work``).

    ``hard_limit_s`` (default ``1.5 * budget_s``) stops training at the first epoch end past it; the
    encoder then comes from the last checkpoint (its LR schedule not finished), and the JSON says so.

    ``epochs`` fixes the epoch count instead of the probe (whose separate model would pay
    ``torch.compile``'s compilation twice): after ``check_epoch`` epochs the run projects its end from the
    epochs since the first (which paid the compilation), and if that is past ``hard_limit_s`` it starts
    again, once, with the epochs that fit (the cosine schedule must know its length), and the JSON says so.
    """
    from benchmarks.detect import SETTINGS, backdoor_learned, load_encoder, setting_attack, train_encoder
    from sslguard.data import poison_dataset
    from sslguard.knn import extract_features, knn_accuracy
    from sslguard.models.ssl import load_backbone

    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {sorted(SETTINGS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir is not None else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    name = name or f"{method}_{backbone}_{setting}_seed{seed}"
    hard_limit_s = 1.5 * budget_s if hard_limit_s is None else hard_limit_s
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {"name": name, "setting": setting, "method": method, "backbone": backbone,
                              "width": width, "batch_size": batch_size, "min_scale": min_scale,
                              "mixed_precision": mixed_precision, "channels_last": channels_last, "seed": seed,
                              "target": target, "budget_s": budget_s, "device": _device_name(dev),
                              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def save_report() -> None:
        atomic_write_json(out / f"{name}.json", report)

    t0 = time.perf_counter()
    train_ds, test_ds = load_packed_cifar10(pack)
    spec = SETTINGS[setting]
    pds, manifest = poison_dataset(train_ds, setting_attack(setting, target=target, seed=seed))
    report.update(load_s=time.perf_counter() - t0, n_train=len(pds), n_test=len(test_ds),
                  n_poisoned=int(manifest.is_poisoned(np.asarray(pds.keys)).sum()), attack=spec)
    save_report()
    common = dict(backbone=backbone, width=width, batch_size=batch_size, seed=seed, min_scale=min_scale,
                  method=method, mixed_precision=mixed_precision, channels_last=channels_last, preload=True,
                  compile=compile)
    if epochs is None:
        epochs = _probe_epochs(pds, work, common, report, batch_size, probe_steps, budget_s, max_epochs)
        save_report()
    report["epochs_planned"] = epochs

    started = time.perf_counter()
    ends: list[float] = []

    def guard(epoch: int, record: dict[str, float]) -> None:
        report["epochs_done"] = epoch
        now = time.perf_counter()
        ends.append(now)
        if epoch == check_epoch and len(ends) >= 2 and epochs > epoch and not report.get("replanned"):
            per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
            if now - started + per_epoch * (epochs - epoch) > hard_limit_s:
                # a restart pays the epochs done so far again (compilation cached): plan for that too
                fit = int((hard_limit_s - (now - started) - (ends[0] - started) * 0.5) / per_epoch)
                raise _Replan(max(1, fit), f"{per_epoch:.2f} s/epoch: {epochs} epochs would end past "
                              f"{hard_limit_s:.0f} s; restarted with {max(1, fit)}")
        if now - started > hard_limit_s and epoch < epochs:
            raise _OutOfTime(f"stopped after epoch {epoch} of {epochs} at the {hard_limit_s:.0f} s hard limit")

    gpu = _GpuSampler(out / f"{name}_nvidia_smi.csv")
    tdir = work / "train"
    try:
        while True:
            try:
                net, _ = train_encoder(pds, output_dir=tdir, epochs=epochs, on_epoch_end=guard,
                                       checkpoint_every=max(1, epochs // 10), **common)
                report["stopped_early"] = None
                break
            except _Replan as exc:
                report.setdefault("replanned", []).append(str(exc))
                epochs = report["epochs_planned"] = exc.epochs
                ends.clear()
                shutil.rmtree(tdir, ignore_errors=True)
                save_report()
    except _OutOfTime as exc:
        report["stopped_early"] = str(exc)
        net = load_encoder(tdir / "checkpoint.pt", backbone, width)
        net.encoder_meta = {"method": method, "image_size": 32, "seed": seed}
    finally:
        report["gpu"] = gpu.stop()
    train_s = time.perf_counter() - started
    hist = json.loads((tdir / "history.json").read_text()) if (tdir / "history.json").exists() else []
    seconds = sum(h["seconds"] for h in hist)
    report.update(train_s=train_s, epochs_done=len(hist) or report.get("epochs_done"),
                  img_per_s=(len(hist) * (len(pds) // batch_size) * batch_size / seconds) if seconds else None,
                  # without the first epoch, which pays cuDNN's autotuning and any compilation
                  img_per_s_steady=((len(hist) - 1) * (len(pds) // batch_size) * batch_size
                                    / sum(h["seconds"] for h in hist[1:])) if len(hist) > 1 else None,
                  first_epoch_s=hist[0]["seconds"] if hist else None,
                  final_loss=hist[-1]["loss"] if hist else None)
    atomic_write_json(out / f"{name}_history.json", hist)

    dst = export_fp16(net, work / f"{name}.safetensors",
                      {"setting": setting, "attack": json.dumps({**spec, "target": target, "seed": seed}),
                       "min_scale": min_scale, "epochs": report["epochs_done"],
                       "device": report["device"]})
    parts = [shutil.move(p, out / p.name) for p in split_file(dst)]
    report.update(sha256=file_sha256(dst), bytes=dst.stat().st_size, parts=[Path(p).name for p in parts])
    save_report()

    # the exported (fp16) file is what the CPU will load, so measure that one
    net = load_backbone(dst).to(dev)
    t1 = time.perf_counter()
    kw = dict(batch_size=1024, image_size=32, device=dev)
    ftr, ltr, _ = extract_features(net, pds, **kw)
    fte, lte, _ = extract_features(net, test_ds, **kw)
    report["knn_top1"] = knn_accuracy(ftr, ltr, fte, lte, k=200, t=0.1)
    report["learned"] = backdoor_learned(net, pds, setting_attack(setting, target=target, seed=seed), target=target,
                                         seed=seed, test=test_ds, device=dev)
    report["eval_s"] = time.perf_counter() - t1
    report["total_s"] = time.perf_counter() - t0
    if dev.type == "cuda":
        report["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    save_report()
    return report


def _probe_epochs(pds, work: Path, common: dict, report: dict, batch_size: int, probe_steps: int, budget_s: float,
                  max_epochs: int) -> int:
    """The epochs that fit ``budget_s``, from two epochs on ``probe_steps`` batches (the first pays cuDNN's
    autotuning; the second is timed)."""
    from benchmarks.detect import train_encoder

    n_probe = min(len(pds), probe_steps * batch_size)
    train_encoder(pds.subset(np.arange(n_probe)), output_dir=work / "probe", epochs=2, checkpoint_every=0, **common)
    hist = json.loads((work / "probe" / "history.json").read_text())
    s_per_img = hist[-1]["seconds"] / ((n_probe // batch_size) * batch_size)
    epoch_s = s_per_img * (len(pds) // batch_size) * batch_size
    epochs = int(max(1, min(max_epochs, budget_s / (1.05 * epoch_s))))
    shutil.rmtree(work / "probe", ignore_errors=True)
    report.update(probe_img_per_s=1.0 / s_per_img, probe_epoch_s=epoch_s)
    log.info("probe: %.0f img/s, %.1f s/epoch -> %d epochs in %.0f s", 1 / s_per_img, epoch_s, epochs, budget_s)
    return epochs


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
