"""SSL-stage detection benchmark on CIFAR-10: PoisonCAM vs PatchSearch.

For each attack setting: poison a CIFAR-10 training subset, get an SSL encoder (trained here through
the product's path, :func:`sslguard.pipeline.encoder.train_encoder`, or loaded from
``encoder.safetensors``), check whether the encoder learned the backdoor (kNN target rate of
triggered vs random-patch test images), run both
detectors on the same embeddings and clusters, and write precision / recall / F1 / AUROC / top-k
precision and runtime into a markdown table. With ``scale``, detection (training excluded) is also
timed, with its peak memory, over the whole 50k training set.

Settings (target class 0 unless changed; rates are fractions of the target class):

- ``htba12_50``: 12x12 HTBA patch on 50% of the class, the setting in which a 4-layer ConvNet learns
  the trigger on a CPU (with BYOL; SimCLR did not, see ``benchmarks/detect.md``);
- ``htba12_10``: the same trigger on 10% of the class (the harder rate of the papers);
- ``htba_50`` / ``htba_10``: HTBA at its default size (0.25 of the side = 8 px) on 50% (Saha et al.
  and PatchSearch) and 10% of the class;
- ``blend_50``, ``ctrl_50``: global triggers (alpha-blended noise; CTRL's frequency trigger).

Training (the CPU defaults of ``benchmarks/configs/cifar10_detect*.yaml``): SimCLR (``method="byol"`` for BYOL,
which on 2026-11-27 was the only recipe here whose encoder learned the 12x12 trigger in 39 epochs, so
``cifar10_detect.yaml`` uses it), convnet4 at width 16 (the
net bounds CPU training and width 16 trains 2.7x faster than 32 on an AVX2-only CPU), 39 epochs of
batch 256, SGD, fp32 + channels_last, crop scale (0.2, 1) as in the MoCo v2 recipe Saha et al. and
PatchSearch pretrain with; ``augment="lightly"`` switches to lightly's stronger ``SimCLRTransform``
defaults. Every table states, per setting, whether the encoder learned the backdoor
(:func:`learned_verdict`): a cluster-based detector cannot find what the encoder never learned, so
detection numbers on an encoder that did not learn it measure nothing but chance. The results and
what they show are in ``benchmarks/detect.md``; on the planted case, where the trigger does form a
cluster, both detectors reach AUROC 1.0 (tests/detectors).

The CIFAR-10 copy is JPEG (see ``shared/data/README.md``): numbers here are for this copy, not CIFAR-10
results to quote against the papers.
"""

from __future__ import annotations

import logging
import os
import resource
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from sslguard.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SETTINGS: dict[str, dict[str, Any]] = {
    "htba12_50": {"attack": "htba", "rate": 0.5, "params": {"trigger_size": 12}},
    "htba12_10": {"attack": "htba", "rate": 0.1, "params": {"trigger_size": 12}},
    "htba_50": {"attack": "htba", "rate": 0.5, "params": {}},
    "htba_10": {"attack": "htba", "rate": 0.1, "params": {}},
    "blend_50": {"attack": "blend", "rate": 0.5, "params": {}},
    "ctrl_50": {"attack": "ctrl", "rate": 0.5, "params": {}},
}


def poisoned_cifar10(setting: str, *, n_per_class: int | None = 1000, target: int = 0, seed: int = 0,
                     root: str | os.PathLike | None = None, split: str = "train"):
    """CIFAR-10 (a seeded per-class subset when ``n_per_class``), poisoned by ``setting``: ``(dataset, manifest)``."""
    from sslguard.data import load_cifar10, poison_dataset, subset_per_class

    attack = setting_attack(setting, target=target, seed=seed)
    ds = load_cifar10(root, split)
    if n_per_class:
        ds = subset_per_class(ds, n_per_class, seed)
    return poison_dataset(ds, attack)


def setting_attack(setting: str, *, target: int = 0, seed: int = 0):
    """The attack object of ``setting`` (it poisons the corpus and adds the test-time trigger), built as
    the product builds one (:meth:`sslguard.config.AttackConfig.build`); rates are of the target class."""
    from sslguard.config import AttackConfig

    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {sorted(SETTINGS)}")
    spec = SETTINGS[setting]
    return AttackConfig(name=spec["attack"], target=target, rate=spec["rate"], rate_of="target", seed=seed,
                        params=dict(spec["params"])).build()


# The benchmark's "augment" names (kept for its configs and documented commands) -> SSLConfig.augment.
AUGMENTS = {"cifar": "default", "lightly": "lightly"}


def encoder_config(*, backbone: str = "convnet4", width: int = 32, epochs: int = 39,
                   schedule_epochs: int | None = None, batch_size: int = 256, seed: int = 0,
                   min_scale: float | None = None, augment: str = "cifar", mixed_precision: str = "no",
                   channels_last: bool = False, method: str = "simclr", checkpoint_every: int = 1,
                   compile: bool = False):
    """The :class:`~sslguard.config.SSLConfig` of the benchmark's encoder recipe (see :func:`train_encoder`).

    Learning rate, weight decay, optimizer, warm-up, temperature, heads and momentum stay at the
    SSLConfig defaults, which equal :func:`~sslguard.train.ssl.train_ssl`'s and
    :func:`~sslguard.models.ssl.build_ssl_model`'s (the recipe the benchmark numbers were measured with).
    """
    from sslguard.config import SSLConfig

    if method not in ("simclr", "byol"):
        raise ValueError(f"method must be 'simclr' or 'byol', got {method!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be 'cifar' or 'lightly', got {augment!r}")
    ssl = SSLConfig(method=method, backbone=backbone, width=width, epochs=epochs, schedule_epochs=schedule_epochs,
                    batch_size=batch_size, min_scale=0.08 if min_scale is None else min_scale,
                    augment=AUGMENTS[augment], mixed_precision=mixed_precision, channels_last=channels_last,
                    checkpoint_every=checkpoint_every, seed=seed, compile=compile)
    ssl.validate()
    return ssl


def train_encoder(dataset, *, output_dir: str | os.PathLike, backbone: str = "convnet4", width: int = 32,
                  epochs: int = 39, schedule_epochs: int | None = None, batch_size: int = 256, seed: int = 0,
                  min_scale: float | None = None, augment: str = "cifar", mixed_precision: str = "no",
                  channels_last: bool = False, method: str = "simclr", progress: bool = False, preload: bool = False,
                  checkpoint_every: int = 1, on_epoch_end=None,
                  compile: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """SimCLR (or, with ``method="byol"``, BYOL) encoder on ``dataset`` (resumes from ``output_dir`` when a
    matching checkpoint is there), trained by the product's :func:`sslguard.pipeline.encoder.train_encoder`
    with :func:`encoder_config`'s SSLConfig. BYOL has no negatives, so nothing pushes apart images that
    share a trigger; Saha et al. attack both kinds.

    ``min_scale`` is the smallest random-resized-crop area (default SimCLR's 0.08; Saha et al. and
    PatchSearch pretrain with MoCo v2's 0.2, under which a pasted patch survives in more views).
    ``augment``: ``"cifar"`` (SSLConfig ``augment="default"``) is SimCLR's CIFAR recipe
    (:func:`~sslguard.train.augment.ssl_augmentations`: jitter 0.4, no blur); ``"lightly"`` is lightly's
    ``SimCLRTransform`` defaults at 32 px (jitter 0.8 / hue 0.2, blur p=0.5), stronger, which wipes out more
    of the natural-image cues than of a pasted patch. ``preload``, ``progress``, ``on_epoch_end`` and
    ``compile`` (SSLConfig's) go to the pipeline's ``train_encoder``. Seeds torch with ``seed`` first (the
    model's initial weights).
    Returns ``(backbone, info)``.
    """
    from sslguard.models.ssl import load_backbone
    from sslguard.pipeline.encoder import train_encoder as train_ssl_encoder

    ssl = encoder_config(backbone=backbone, width=width, epochs=epochs, schedule_epochs=schedule_epochs,
                         batch_size=batch_size, seed=seed, min_scale=min_scale, augment=augment,
                         mixed_precision=mixed_precision, channels_last=channels_last, method=method,
                         checkpoint_every=checkpoint_every, compile=compile)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    res = train_ssl_encoder(ssl, dataset, image_size=32, output_dir=output_dir, preload=preload, progress=progress,
                            on_epoch_end=on_epoch_end)
    info = {"epochs": epochs, "schedule_epochs": schedule_epochs or epochs, "batch_size": batch_size,
            "backbone": backbone, "width": width, "min_scale": ssl.min_scale,
            "augment": augment, "method": method,
            "mixed_precision": mixed_precision, "channels_last": channels_last,
            "train_seconds_this_call": time.perf_counter() - t0,
            "final_loss": res.losses[-1] if res.losses else None, "encoder_path": str(res.encoder_path)}
    return load_backbone(res.encoder_path), info


def load_encoder(path: str | os.PathLike, backbone: str = "convnet4", width: int = 32) -> torch.nn.Module:
    """An encoder from ``encoder.safetensors`` (:func:`sslguard.models.ssl.load_backbone`) or from a
    training checkpoint ``checkpoint.pt`` (its SimCLR/BYOL state; ``backbone``/``width`` name the net),
    so a run still training can be measured at its last epoch."""
    from sslguard.models.ssl import load_backbone, make_backbone
    from sslguard.train.ssl import load_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_backbone(path).eval()
    state = load_checkpoint(path)["model"]
    net = make_backbone(backbone, width=width)
    sub = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    net.load_state_dict(sub)
    return net.eval()


# ------------------------------------------------------------------------------------------ measuring


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(fn, **kwargs) -> tuple[Any, dict[str, float]]:
    """Run ``fn(**kwargs)``; return its result and ``seconds``, ``tracemalloc_peak_mb`` (Python and NumPy
    allocations during the call; torch's own allocator is not traced), ``cpu_s`` (user + system CPU time
of the process: on a shared machine the honest cost, as wall time also counts waiting), ``peak_rss_mb`` (the process's
    peak resident memory after the call, all earlier work included) and ``rss_growth_mb`` (how much
    the call raised that peak)."""
    rss0 = _rss_mb()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn(**kwargs)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    rss1 = _rss_mb()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return out, {"seconds": seconds, "cpu_s": cpu, "tracemalloc_peak_mb": peak / 2**20, "peak_rss_mb": rss1,
                 "rss_growth_mb": rss1 - rss0}


def backdoor_learned(backbone, train_ds, attack, *, target: int, root=None, max_test: int = 1000, seed: int = 0,
                     patch_size: int = 8, test=None, device=None) -> dict[str, Any]:
    """kNN target rate of triggered vs random-patch vs clean non-target CIFAR-10 test images
    (:func:`sslguard.backdoor.triggered_target_rate`, with ``train_ds`` as the kNN bank; ``test``
    defaults to the CIFAR-10 test split under ``root``)."""
    from sslguard.backdoor import triggered_target_rate
    from sslguard.data import load_cifar10

    test = load_cifar10(root, "test") if test is None else test
    size = None
    try:
        attack.plan((32, 32, 3), np.random.default_rng(0))["location"]
    except (KeyError, TypeError):
        size = patch_size  # global trigger: the random-patch control gets a fixed size
    rates = triggered_target_rate(backbone, train_ds, test, attack, target, patch_size=size, image_size=32,
                                  max_test=max_test, seed=seed, device=device)
    return rates.to_dict()


def evaluate_detectors(backbone, dataset, manifest, *, k: int = 10, seed: int = 0, batch_size: int = 256,
                       detectors: Sequence[str] = ("poisoncam", "patchsearch"),
                       detector_kwargs: dict[str, dict[str, Any]] | None = None,
                       out_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Embed once, cluster once, run each detector on the same clusters; one row of metrics per detector.

    Embedding and clustering are timed separately (``embed_s``, ``cluster_s``); a detector's
    ``seconds`` excludes them (they are shared), ``total_s`` adds them back.
    """
    from sslguard.cluster import kmeans
    from sslguard.detectors import get_detector
    from sslguard.embed import embed_dataset
    from sslguard.metrics import detection_metrics

    t0 = time.perf_counter()
    _, emb = embed_dataset(backbone, dataset, batch_size=batch_size, normalize=True, progress=False)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clusters = kmeans(emb, k, seed=seed)
    cluster_s = time.perf_counter() - t0
    truth = manifest.is_poisoned(np.asarray(dataset.keys))
    purity = [{"cluster": int(c), "size": int(s), "poisoned": int(truth[clusters.assignments == c].sum())}
              for c, s in enumerate(clusters.sizes)]
    rows = []
    for name in detectors:
        kw = dict((detector_kwargs or {}).get(name, {}))
        res, cost = measure(get_detector(name), backbone=backbone, dataset=dataset, embeddings=emb,
                            clusters=clusters, seed=seed, batch_size=batch_size, **kw)
        m = detection_metrics(res.scores, res.flagged, truth)
        if out_dir is not None:
            res.to_csv(Path(out_dir) / f"{name}_scores.csv")
            atomic_write_json(Path(out_dir) / f"{name}_info.json", res.info)
        rows.append({"detector": name, **m, **cost, "embed_s": embed_s, "cluster_s": cluster_s,
                     "total_s": cost["seconds"] + embed_s + cluster_s, "threshold": res.threshold,
                     "cluster_purity": purity, "info": res.info})
    return rows


@dataclass
class BenchConfig:
    """What :func:`run_detect_benchmark` runs (typed; scripts build it from flags)."""

    settings: list[str] = field(default_factory=lambda: ["htba12_50"])
    encoders: dict[str, str] = field(default_factory=dict)  # setting -> encoder.safetensors; others are trained
    out_dir: str = "benchmarks/results/detect"
    n_per_class: Optional[int] = 1000
    target: int = 0
    train_epochs: int = 39
    schedule_epochs: Optional[int] = None
    backbone: str = "convnet4"
    width: int = 32
    min_scale: Optional[float] = None  # random-resized-crop minimum area; None = SimCLR's 0.08
    augment: str = "cifar"  # "cifar" (SimCLR's CIFAR recipe) or "lightly" (lightly SimCLRTransform defaults)
    method: str = "simclr"  # or "byol"
    mixed_precision: str = "no"  # "bf16" is about 2x on a recent CPU
    channels_last: bool = False
    k: int = 10
    seed: int = 0  # poisoning, training, and (unless detector_seeds) k-means + detectors
    detector_seeds: Optional[list[int]] = None  # k-means + detector seeds to repeat detection with (same encoder)
    batch_size: int = 256
    scale: bool = False  # also time detection on all 50k training images
    detectors: list[str] = field(default_factory=lambda: ["poisoncam", "patchsearch"])
    detector_params: dict[str, Any] = field(default_factory=dict)  # detector -> keyword arguments
    data_root: Optional[str] = None

    def validate(self) -> None:
        from sslguard.config import ConfigError
        from sslguard.detectors import list_detectors

        for i, s in enumerate(self.settings):
            if s not in SETTINGS:
                raise ConfigError(f"settings[{i}]: unknown setting {s!r}; choose from {sorted(SETTINGS)}")
        for s, p in self.encoders.items():
            if s not in SETTINGS:
                raise ConfigError(f"encoders.{s}: unknown setting; choose from {sorted(SETTINGS)}")
            if not Path(p).exists():
                raise ConfigError(f"encoders.{s}: file not found: {p}")
        for i, d in enumerate(self.detectors):
            if d not in list_detectors():
                raise ConfigError(f"detectors[{i}]: unknown detector {d!r}")
        for d in self.detector_params:
            if d not in self.detectors:
                raise ConfigError(f"detector_params.{d}: not one of the detectors run ({self.detectors})")
        if self.n_per_class is not None and self.n_per_class <= 0:
            raise ConfigError("n_per_class: must be positive (or null for all 5,000 per class)")
        if self.k < 2:
            raise ConfigError(f"k: must be >= 2, got {self.k}")
        if self.min_scale is not None and not 0.0 < self.min_scale <= 1.0:
            raise ConfigError(f"min_scale: must be in (0, 1], got {self.min_scale}")
        if self.method not in ("simclr", "byol"):
            raise ConfigError(f"method: 'simclr' or 'byol', got {self.method!r}")
        if self.augment not in ("cifar", "lightly"):
            raise ConfigError(f"augment: 'cifar' or 'lightly', got {self.augment!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision: one of no, bf16, fp16; got {self.mixed_precision!r}")
        if self.train_epochs < 1:
            raise ConfigError(f"train_epochs: must be >= 1, got {self.train_epochs}")
        if self.detector_seeds is not None and (not self.detector_seeds
                                                or len(set(self.detector_seeds)) != len(self.detector_seeds)):
            raise ConfigError(f"detector_seeds: a non-empty list of distinct seeds, got {self.detector_seeds}")


def run_detect_benchmark(cfg: BenchConfig) -> Path:
    """Run every setting of ``cfg`` and write ``<out_dir>/detect_results.md`` (+ ``.json``); returns the table path."""
    out = Path(cfg.out_dir)
    rows: list[dict[str, Any]] = []
    for setting in cfg.settings:
        sdir = out / setting
        dataset, manifest = poisoned_cifar10(setting, n_per_class=cfg.n_per_class, target=cfg.target, seed=cfg.seed,
                                             root=cfg.data_root)
        if setting in cfg.encoders:
            backbone = load_encoder(cfg.encoders[setting], cfg.backbone, cfg.width)
            enc = {"encoder_path": cfg.encoders[setting], "loaded": True}
        else:
            backbone, enc = train_encoder(dataset, output_dir=sdir / "encoder", backbone=cfg.backbone,
                                          width=cfg.width, epochs=cfg.train_epochs,
                                          schedule_epochs=cfg.schedule_epochs, seed=cfg.seed,
                                          batch_size=cfg.batch_size, min_scale=cfg.min_scale, augment=cfg.augment,
                                          method=cfg.method,
                                          mixed_precision=cfg.mixed_precision, channels_last=cfg.channels_last)
        backbone.eval()
        learned = backdoor_learned(backbone, dataset, manifest_attack(setting, cfg), target=cfg.target,
                                   root=cfg.data_root, seed=cfg.seed)
        seeds = cfg.detector_seeds or [cfg.seed]
        for ds_seed in seeds:
            rdir = sdir / f"seed{ds_seed}" if len(seeds) > 1 else sdir
            rdir.mkdir(parents=True, exist_ok=True)
            for r in evaluate_detectors(backbone, dataset, manifest, k=cfg.k, seed=ds_seed, batch_size=cfg.batch_size,
                                        detectors=cfg.detectors, detector_kwargs=cfg.detector_params, out_dir=rdir):
                rows.append({"setting": setting, "n_images": len(dataset), "encoder": enc, "learned": learned,
                             "detector_seed": ds_seed, **r})
        if cfg.scale:
            full, full_manifest = poisoned_cifar10(setting, n_per_class=None, target=cfg.target, seed=cfg.seed,
                                                   root=cfg.data_root)
            for r in evaluate_detectors(backbone, full, full_manifest, k=cfg.k, seed=cfg.seed,
                                        batch_size=cfg.batch_size, detectors=cfg.detectors,
                                        detector_kwargs=cfg.detector_params, out_dir=sdir / "scale50k"):
                rows.append({"setting": f"{setting} (50k)", "n_images": len(full), "encoder": enc, "learned": learned,
                             "detector_seed": cfg.seed, **r})
        write_table(rows, out / "detect_results.md")
    atomic_write_json(out / "detect_results.json", rows)
    return write_table(rows, out / "detect_results.md")


def manifest_attack(setting: str, cfg: BenchConfig):
    """The attack object of ``setting`` with ``cfg``'s target and seed (for its test-time trigger)."""
    return setting_attack(setting, target=cfg.target, seed=cfg.seed)


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.{nd}f}"
    return str(v)


def learned_verdict(learned: dict[str, Any] | None, purity: Sequence[dict[str, int]] | None,
                    n_poisoned: int) -> str:
    """Plain-words verdict on whether the encoder learned the backdoor, from the kNN target rates
    (:func:`backdoor_learned`) and the k-means purity of the poisons.

    ``learned`` needs both: triggered non-target test images go to the target (rate >= 0.5, at least
    0.2 above a same-size random patch) *and* one cluster holds most poisons at purity >= 0.8, which is
    what a cluster-based detector needs. A high random-patch rate means the encoder learned "any patch".
    """
    ln = learned or {}
    trig, rand = ln.get("triggered"), ln.get("random_patch")
    best = max(purity or [], key=lambda c: c["poisoned"], default=None)
    cluster_ok = bool(best and n_poisoned and best["poisoned"] >= 0.5 * n_poisoned
                      and best["poisoned"] >= 0.8 * best["size"])
    where = (f"best cluster holds {best['poisoned']} of the {n_poisoned} poisons among {best['size']} members"
             if best else "no clusters")
    if trig is None:
        return f"not measured; {where}"
    rates = f"kNN target rate triggered {trig:.2f} vs random patch {rand:.2f}"
    if trig >= 0.5 and trig - rand >= 0.2 and cluster_ok:
        return f"**learned** ({rates}; {where})"
    if trig >= 0.5 and rand >= 0.5:
        return f"learned as 'any patch' ({rates}; {where})"
    if cluster_ok:
        return f"poisons clustered, trigger not transferred to test images ({rates}; {where})"
    if trig - rand >= 0.1:
        return f"partly learned, no trigger cluster ({rates}; {where})"
    return f"**not learned** ({rates}; {where})"


def write_table(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Markdown table of the benchmark rows (one per setting x detector), then a verdict per setting."""
    head = ("| setting | n | poisons | detector | seed | learned: trig / rand-patch / clean | precision | recall | F1 | AUROC "
            "| top10 | top50 | top100 | top@poisons | detect wall s | detect CPU s | embed+cluster s | tracemalloc peak MiB "
            "| peak RSS MiB |")
    lines = ["# SSL-stage detection benchmark (CIFAR-10 JPEG copy)", "",
             "Generated by `benchmarks.detect.run_detect_benchmark`; see that module's docstring for the setup.",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ln = r.get("learned") or {}
        learned = f"{_f(ln.get('triggered'), 2)} / {_f(ln.get('random_patch'), 2)} / {_f(ln.get('clean'), 2)}"
        lines.append("| " + " | ".join([
            r["setting"], str(r["n_images"]), str(r["n_poisoned"]), r["detector"], str(r.get("detector_seed", "-")),
            learned,
            _f(r["precision"]), _f(r["recall"]), _f(r["f1"]), _f(r["auroc"]), _f(r["top10_precision"], 2),
            _f(r["top50_precision"], 2), _f(r["top100_precision"], 2), _f(r["toptrue_precision"]),
            _f(r["seconds"], 1), _f(r.get("cpu_s"), 1), _f(r["embed_s"] + r["cluster_s"], 1), _f(r["tracemalloc_peak_mb"], 0),
            _f(r["peak_rss_mb"], 0)]) + " |")
    verdicts = {}
    for r in rows:
        verdicts.setdefault(r["setting"], learned_verdict(r.get("learned"), r.get("cluster_purity"), r["n_poisoned"]))
    lines += ["", "Did the encoder learn the backdoor? (kNN target rates of triggered vs random-patch non-target test "
              "images, and how purely k-means gathered the poisons; a cluster-based detector can only find a "
              "backdoor the encoder learned)", ""]
    lines += [f"- {s}: {v}" for s, v in verdicts.items()]
    return atomic_write_text(path, "\n".join(lines) + "\n")
