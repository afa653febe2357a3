"""BYOL training throughput of one recipe on the lent GPU, measured the same way for any version of the code.

Run it once with today's package on ``PYTHONPATH`` and once with an older checkout's (``git archive``
of a commit, unpacked into an ignored folder), in one device run, and the two rows compare the code,
not two machines (``benchmarks/gpu.md``). It uses only what both versions have:
:func:`benchmarks.gpu.load_packed_cifar10`, :func:`benchmarks.detect.train_encoder` and the poisoning
of :func:`benchmarks.detect.poisoned_cifar10`'s settings, so the step is the product's
:func:`sslguard.train.ssl.train_ssl` of that version.

It trains ``--epochs`` epochs on the first ``--steps`` batches of the poisoned training set; the first
epoch pays cuDNN's autotuning (and ``torch.compile`` where asked), the rest are timed. Writes one JSON
row: images per second (each image two views) over the timed epochs, the median ``nvidia-smi``
utilisation over them, the peak GPU memory.

Run as ``PYTHONPATH=<checkout> python3 benchmarks/gpu_throughput.py --pack ... --label ... --output rows.jsonl``.

Limits: a slice of the corpus, not a whole run; ``--compile`` needs a version that has it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _util_sampler(samples: list, stop: threading.Event) -> None:
    # nvidia-smi's utilisation, 5 times a second, with the time it was read (only the timed epochs count)
    cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
    while not stop.is_set():
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
            samples.append((time.perf_counter(), float(out.splitlines()[0])))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return
        stop.wait(0.2)


def measure(pack: str, *, label: str, batch_size: int, steps: int, epochs: int, compile_: bool,
            setting: str = "htba_50", seed: int = 0) -> dict:
    from benchmarks.detect import setting_attack, train_encoder
    from benchmarks.gpu import load_packed_cifar10
    from sslguard.data import poison_dataset

    train, _ = load_packed_cifar10(pack)
    pds, _ = poison_dataset(train, setting_attack(setting, target=0, seed=seed))
    sub = pds.subset(np.arange(min(len(pds), steps * batch_size)))
    ends: list[float] = []
    samples: list = []
    stop = threading.Event()
    thread = threading.Thread(target=_util_sampler, args=(samples, stop), daemon=True)
    if torch.cuda.is_available() and shutil.which("nvidia-smi"):
        thread.start()
    kw = dict(backbone="cifar_resnet18", width=64, batch_size=batch_size, seed=seed, min_scale=0.2, method="byol",
              mixed_precision="bf16", channels_last=True, preload=True, checkpoint_every=0,
              on_epoch_end=lambda e, r: ends.append(time.perf_counter()))
    if compile_:
        kw["compile"] = True
    work = Path(tempfile.mkdtemp(prefix="gpu_throughput_"))
    t0 = time.perf_counter()
    try:
        train_encoder(sub, output_dir=work, epochs=epochs, **kw)
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)
    hist_s = [b - a for a, b in zip(ends, ends[1:])]  # epoch 2.. (their on_epoch_end gaps, checkpoints off)
    timed = sum(hist_s)
    imgs = (len(ends) - 1) * (len(sub) // batch_size) * batch_size
    util = [u for t, u in samples if ends and ends[0] <= t <= ends[-1]]
    row = {"label": label, "batch_size": batch_size, "steps_per_epoch": len(sub) // batch_size, "epochs": epochs,
           "compile": compile_, "first_epoch_s": (ends[0] - t0) if ends else None, "timed_s": timed,
           "img_per_s": imgs / timed if timed else None,
           "gpu_util_median": float(np.median(util)) if util else None, "util_samples": len(util),
           "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", required=True, help="file written by `scripts/benchmark.py gpu-pack`")
    ap.add_argument("--label", required=True, help="name of this row (the code version)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="the first is warm-up, the rest are timed")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--output", required=True, help="JSON lines file the row is appended to")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first is not timed)")
    row = measure(args.pack, label=args.label, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs,
                  compile_=args.compile)
    print(json.dumps(row), flush=True)
    with open(args.output, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    # no sys.path edits: PYTHONPATH names the checkout whose code is measured
    sys.exit(main())
