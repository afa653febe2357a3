"""SSL pretraining benchmark on CIFAR-10 (CPU-sized): throughput, kNN accuracy, backdoor learned?

:func:`run_ssl_benchmark` measures

1. training throughput (images/s, two augmented views each, augmentation included) of SimCLR with
   each backbone for a few steps, plus the batched augmentation alone vs lightly's per-image PIL
   transform (the reason :mod:`sslguard.train.augment` exists);
2. SimCLR (Chen et al. 2020) with ``convnet4`` on ``n_train`` CIFAR-10 training images for a time
   budget: one encoder on clean data and one on data poisoned by an HTBA patch (Saha et al. 2022),
   half the budget each (epochs chosen from the measured throughput; the schedule always completes);
3. weighted kNN top-1 (k=200, t=0.1) of both encoders on the full CIFAR-10 test set, the bank being
   the clean training subset;
4. the kNN target rate of non-target test images carrying the trigger vs a random patch of the same
   size vs no patch (:func:`sslguard.backdoor.triggered_target_rate`), for both encoders.

The CIFAR-10 copy in ``shared/data`` is JPEG (quality 75): numbers are for this copy, not CIFAR-10
results to quote against the papers. Short CPU budgets give weak encoders; the backdoor verdict
says what it saw, not what a 200-epoch GPU run would show.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sslguard.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("convnet4:32", "cifar_resnet18:32", "cifar_resnet18:64")


def _parse_backbone(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, width = spec.partition(":")
    if name == "timm":  # timm:<model> has no width
        return spec, {}
    return name, ({"width": int(width)} if width else {})


def measure_throughput(backbone: str, images: torch.Tensor, *, steps: int = 5, batch_size: int = 256,
                       method: str = "simclr", warmup: int = 1, seed: int = 0, bf16: bool = True) -> float:
    """Training images/s of ``method`` with ``backbone`` (``name[:width]``), augmentation included.

    The model and views are the ones :func:`sslguard.pipeline.encoder.train_encoder` builds from the
    same :class:`~sslguard.config.SSLConfig`; only the optimizer step is a plain SGD one, so that a few
    steps can be timed without a training run's data loading and checkpoints.
    ``bf16``: bf16 autocast + channels_last, as the benchmark trains (about 2x fp32 on this CPU)."""
    from sslguard.config import SSLConfig
    from sslguard.models.ssl import build_ssl_model, make_backbone
    from sslguard.pipeline.encoder import ssl_views

    name, kw = _parse_backbone(backbone)
    ssl = SSLConfig(method=method, backbone=name, width=kw.get("width"))
    torch.manual_seed(seed)
    model = build_ssl_model(ssl.method, make_backbone(ssl.backbone, **ssl.backbone_args()), **ssl.model_args())
    model.train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    a0, a1 = ssl_views(ssl, images.shape[-1])
    gen = torch.Generator().manual_seed(seed)
    x = images[:batch_size]
    if x.shape[0] < batch_size:
        raise ValueError(f"need {batch_size} images for the throughput batch, got {x.shape[0]}")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(a0(x, gen), a1(x, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def measure_augment(images: torch.Tensor, n_pil: int = 256, reps: int = 5) -> dict[str, float]:
    """Images/s (one view) of the batched augmentation (SimCLR's training view,
    :func:`sslguard.pipeline.encoder.ssl_views`) and of lightly's PIL SimCLR view transform."""
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    from sslguard.config import SSLConfig
    from sslguard.pipeline.encoder import ssl_views

    aug, _ = ssl_views(SSLConfig(method="simclr"), images.shape[-1])
    gen = torch.Generator().manual_seed(0)
    aug(images, gen)
    t0 = time.perf_counter()
    for _ in range(reps):
        aug(images, gen)
    batched = reps * images.shape[0] / (time.perf_counter() - t0)
    ref = SimCLRTransform(input_size=images.shape[-1], cj_strength=0.5, gaussian_blur=0.0).transforms[0]
    pil = [Image.fromarray(images[i % images.shape[0]].permute(1, 2, 0).numpy()) for i in range(n_pil)]
    t0 = time.perf_counter()
    for im in pil:
        ref(im)
    return {"batched": batched, "lightly_pil": n_pil / (time.perf_counter() - t0)}


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [
        "# SSL pretraining benchmark (CIFAR-10 JPEG copy, CPU)",
        "",
        f"Measured {r['date']} on {env['machine']} with {env['threads']} torch threads "
        f"(torch {env['torch']}; 1-minute load average {env['load_avg_1min']:.1f} at the start: a shared machine "
        f"slows every number here); `python scripts/benchmark.py ssl {r['argv']}`.",
        "",
        "## Throughput (SimCLR training step, two views, augmentation included)",
        "",
        "| backbone | params | batch | images/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in r["throughput"]:
        lines.append(f"| {row['backbone']} | {row['params']:,} | {row['batch_size']} | {row['images_per_s']:.0f} |")
    a = r["augment"]
    lines += ["", f"Augmentation alone (one view, 32 px): batched {a['batched']:.0f} images/s; "
              f"lightly's per-image PIL transform {a['lightly_pil']:.0f} images/s.", ""]
    lines += [
        "## SimCLR, convnet4, time budget",
        "",
        f"{r['n_train']} training images (per-class subset), budget {r['minutes']} min in all "
        f"(half per encoder), batch {r['batch_size']}. kNN: k={r['knn_k']}, t=0.1, bank = the clean training "
        f"subset, queries = the {r['n_test']} CIFAR-10 test images. Attack: {r['attack_desc']}.",
        "",
        "| encoder | epochs | train s | images/s | final loss | kNN top-1 | target rate: trigger | random patch | clean |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("clean", "poisoned"):
        e = r["encoders"].get(name)
        if e is None:
            continue
        b = e.get("backdoor") or {}
        lines.append(f"| {name} | {e['epochs']} | {e['train_seconds']:.0f} | {e['images_per_s']:.0f} | "
                     f"{_fmt(e['final_loss'])} | {_fmt(e['knn_top1'])} | {_fmt(b.get('triggered'))} | "
                     f"{_fmt(b.get('random_patch'))} | {_fmt(b.get('clean'))} |")
    lines += ["", f"Backdoor learned: **{r['backdoor_verdict']}** ({r['backdoor_rule']}).", "",
              "An encoder that ignores the patch puts about as many triggered as clean images in the target "
              "class; JPEG compression of the source images can blur small triggers.", ""]
    return "\n".join(lines)


def run_ssl_benchmark(
    *,
    minutes: float = 10.0,
    n_train: int = 10000,
    batch_size: int = 256,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    throughput_steps: int = 5,
    threads: int | None = None,
    attack: str | None = "htba",
    attack_params: dict[str, Any] | None = None,
    target: int = 0,
    poison_rate: float = 0.5,
    knn_k: int = 200,
    n_backdoor_test: int | None = 2000,
    seed: int = 0,
    cifar_root: str | os.PathLike | None = None,
    output: str | os.PathLike | None = "benchmarks/ssl.md",
    work_dir: str | os.PathLike | None = None,
    progress: bool = False,
    argv: str = "",
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the numbers and writes ``output`` (+ .json).

    ``attack=None`` skips the poisoned encoder and the backdoor test. ``attack_params`` are the
    attack's :class:`~sslguard.config.AttackConfig` ``params`` (default: a 12 px HTBA patch, which a
    4-layer ConvNet can learn on CPU). Both encoders are trained by
    :func:`sslguard.pipeline.encoder.train_encoder` (SimCLR, convnet4 width 32, bf16 + channels_last). ``work_dir`` keeps checkpoints (default: a temporary folder), so an interrupted
    benchmark resumes its training runs.
    """
    from sslguard.backdoor import triggered_target_rate
    from sslguard.data.datasets import load_cifar10, subset_per_class
    from sslguard.data.poisoned import poison_dataset
    from sslguard.knn import extract_features, knn_accuracy
    from sslguard.config import SSLConfig
    from sslguard.models.backbones import count_parameters
    from sslguard.models.ssl import load_backbone, make_backbone
    from sslguard.pipeline.encoder import train_encoder

    if threads:
        torch.set_num_threads(int(threads))
    threads_used = torch.get_num_threads()
    t_start = time.perf_counter()
    train_full = load_cifar10(cifar_root, "train")
    test = load_cifar10(cifar_root, "test")
    train = subset_per_class(train_full, max(1, n_train // 10), seed)
    images = torch.from_numpy(np.stack([train.load_array(i) for i in range(batch_size)])).permute(0, 3, 1, 2).contiguous()

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": argv, "minutes": minutes,
        "n_train": len(train), "n_test": len(test), "batch_size": batch_size, "knn_k": knn_k, "seed": seed,
        "environment": {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "threads": threads_used,
                        "torch": torch.__version__, "load_avg_1min": os.getloadavg()[0]},
        "throughput": [], "encoders": {},
    }
    for spec in backbones:
        name, kw = _parse_backbone(spec)
        ips = measure_throughput(spec, images, steps=throughput_steps, batch_size=batch_size, seed=seed)
        result["throughput"].append({"backbone": spec, "params": count_parameters(make_backbone(name, **kw)),
                                     "batch_size": batch_size, "images_per_s": ips, "threads": threads_used})
        log.info("throughput %s: %.0f img/s (%d threads)", spec, ips, threads_used)
    result["augment"] = measure_augment(images)

    conv = next((row["images_per_s"] for row in result["throughput"] if row["backbone"].startswith("convnet4")), None)
    if conv is None:
        conv = measure_throughput("convnet4:32", images, steps=throughput_steps, batch_size=batch_size, seed=seed)
    n_runs = 2 if attack else 1
    budget_s = minutes * 60.0 / n_runs
    # 85% of the measured rate: data loading and checkpoints also take time inside the budget
    epochs = max(1, int(budget_s * conv * 0.85 / len(train)))
    result["epochs_per_encoder"] = epochs

    runs: dict[str, Any] = {"clean": train}
    manifest = atk = None
    if attack:
        from sslguard.config import AttackConfig

        params = {"trigger_size": 12} if attack_params is None and attack == "htba" else dict(attack_params or {})
        atk_cfg = AttackConfig(name=attack, target=target, rate=poison_rate, rate_of="target", seed=seed, params=params)
        atk_cfg.validate()
        atk = atk_cfg.build()
        runs["poisoned"], manifest = poison_dataset(train, atk)
        result["attack_desc"] = (f"{attack} {params} on {manifest.n_poisoned} of the target class {target}'s "
                                 f"{int((train.labels == target).sum())} images")
    else:
        result["attack_desc"] = "none"

    tmp = tempfile.TemporaryDirectory(prefix="ssl-training-benchmark-") if work_dir is None else None
    work = Path(work_dir) if work_dir is not None else Path(tmp.name)
    try:
        knn_kw = dict(batch_size=512, image_size=32)
        ssl = SSLConfig(method="simclr", backbone="convnet4", width=32, epochs=epochs, batch_size=batch_size,
                        mixed_precision="bf16", channels_last=True, checkpoint_every=1, seed=seed)
        ssl.validate()
        for name, ds in runs.items():
            torch.manual_seed(seed)
            res = train_encoder(ssl, ds, image_size=32, output_dir=work / name, progress=progress)
            # channels_last as trained, so the kNN features come from the same kernels as the training run's
            backbone = load_backbone(res.encoder_path).to(memory_format=torch.channels_last).eval()
            ftr, ltr, _ = extract_features(backbone, train, **knn_kw)
            fte, lte, _ = extract_features(backbone, test, **knn_kw)
            enc = {"epochs": epochs, "train_seconds": res.seconds, "images_per_s": res.images_per_second,
                   "final_loss": res.losses[-1] if res.losses else None,
                   "knn_top1": knn_accuracy(ftr, ltr, fte, lte, k=knn_k, t=0.1)}
            if atk is not None:
                enc["backdoor"] = triggered_target_rate(backbone, train, test, atk, target, k=knn_k, image_size=32,
                                                        max_test=n_backdoor_test, seed=seed).to_dict()
            result["encoders"][name] = enc
            log.info("%s encoder: %s", name, enc)
    finally:
        if tmp is not None:
            tmp.cleanup()

    rule = "poisoned encoder: trigger rate - random-patch rate >= 0.10 and trigger rate - clean encoder's trigger rate >= 0.10"
    result["backdoor_rule"] = rule
    if atk is None:
        result["backdoor_verdict"] = "not tested"
    else:
        p, c = result["encoders"]["poisoned"]["backdoor"], result["encoders"]["clean"]["backdoor"]
        learned = p["triggered"] - p["random_patch"] >= 0.10 and p["triggered"] - c["triggered"] >= 0.10
        result["backdoor_verdict"] = "yes" if learned else "no"
    result["total_seconds"] = time.perf_counter() - t_start
    if output is not None:
        out = Path(output)
        atomic_write_text(out, _markdown(result))
        atomic_write_json(out.with_suffix(".json"), result)
    return result
