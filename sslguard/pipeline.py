"""One run that sanitises a corpus: data -> encoder -> embeddings -> clusters -> detectors -> fused
flags -> clean manifest -> metrics -> report, every stage cached in ``runs/<name>/``.

Stages and their artefacts (all written atomically with :mod:`sslguard.utils.io`):

==============  ===========================================================================
data            ``dataset.json`` (keys, labels, paths, skipped files), ``manifest.csv/json``
                (ground truth, when an attack is injected; ``manifest_extra.*`` for ``extra_attack``)
encoder         ``encoder.safetensors`` (trained here, or ``encoder=`` a file given)
embed           ``embeddings.npy`` (N, D, L2-normalised) + ``embeddings_index.npy`` (N keys)
cluster         ``clusters.npz`` (FAISS k-means: assignments, centroids, ...)
detector:<n>    ``detectors/<n>.json`` + ``.csv``: one :class:`DetectionResult` per detector
classifier      ``classifier.safetensors`` + ``classifier.json`` (clean accuracy, ASR)
backdoor        ``backdoor.json``: kNN target rate of triggered vs random-patch test images
fuse            ``scores.csv`` (index, path, label, one column per detector, fused, flagged,
                [poisoned]), ``flagged.txt``, ``clean_indices.txt``, ``clean_manifest.txt``
retrain         ``encoder_clean.safetensors`` + ``retrain.json`` (optional)
report          ``summary.json``, ``report.html``, ``figures/*.png``
==============  ===========================================================================

**Caching.** Each stage has a *fingerprint*: a hash of the configuration parts it depends on and
of its upstream stages' fingerprints (the data stage also hashes the corpus: keys, labels and each
file's path, size and mtime). After a stage's artefacts are written, a stamp
``.stages/<stage>.json`` records the fingerprint and each artefact's size and SHA-256; a stage is
skipped when its stamp matches and every artefact is intact. A killed run therefore resumes at the
first stage without a valid stamp, and because every stage seeds itself from ``seed`` and hands
downstream what it reads back from disk, a resumed run writes the same bytes as an uninterrupted one.
SSL training resumes mid-stage too (epoch checkpoints of :func:`sslguard.train.ssl.train_ssl`).

**Fusion.** Each detector's scores are put on a common scale, then combined:
``fusion.method="rank_mean"`` (default) averages per-detector percentile ranks (scale-free, robust to
one detector's outliers); ``"max_norm"`` takes the maximum of min-max-normalised scores (one confident
detector is enough). Which images are *flagged* (and left out of the clean manifest) is
``fusion.flag``: ``"any"`` (default; flagged by any detector, the union: poisons cost more than the
few clean images lost), ``"majority"``, ``"all"``, or ``"fused"`` (fused score above its
``fusion.fused_quantile``).

**Source data are read-only.** The run only reads the input corpus; it writes lists of indices and
paths, never a file under the data root.

Limits: detectors of the classifier stage need labels and are skipped (with a notice) on an
unlabeled corpus; the backdoor check and the before/after numbers of retraining need an attack (to
build triggered test images) and a labeled test split. The SSL encoder is trained (or loaded) even when
``detectors.ssl`` is empty, because the embedding map and the backdoor check use it. ``clean_manifest.txt``
(paths) exists only for corpora made of files; for in-memory corpora (digits, CIFAR-10 arrays)
``clean_indices.txt`` is the list to retrain on. Under ``accelerate launch`` the SSL training and the embedding use every
process; the later stages run on the main process only (they are small next to training).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sslguard.config import DetectConfig, dump_yaml, to_dict
from sslguard.utils.io import atomic_write_json, atomic_write_text, file_sha256, package_versions, save_npy, to_json


#: Test hook: ``SSLGUARD_KILL_AFTER=<stage>`` makes the process SIGKILL itself right after that stage
#: is committed (e.g. ``embed`` or ``detector:poisoncam``), so tests can check that a rerun resumes.
KILL_ENV = "SSLGUARD_KILL_AFTER"
STAGE_VERSION = 1  # bump when an artefact's format changes, so old stamps stop matching


# ------------------------------------------------------------------------------------------ helpers


def fingerprint(*parts: Any) -> str:
    """Short SHA-256 of the JSON of ``parts`` (sorted keys, numpy-aware)."""
    return hashlib.sha256(to_json([STAGE_VERSION, *parts], indent=None).encode()).hexdigest()[:20]


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class RunDir:
    """``runs/<name>/`` with per-stage stamps (``.stages/<stage>.json``) that make stages skippable."""

    def __init__(self, root: str | os.PathLike, quiet: bool = False, is_main: bool = True):
        self.root = Path(root)
        self.quiet = quiet
        self.is_main = is_main
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def _stamp(self, stage: str) -> Path:
        return self.root / ".stages" / f"{stage.replace(':', '__')}.json"

    def valid(self, stage: str, fp: str) -> bool:
        """True when ``stage`` was committed with fingerprint ``fp`` and its artefacts are intact."""
        stamp = self._stamp(stage)
        if not stamp.exists():
            return False
        try:
            rec = json.loads(stamp.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if rec.get("fingerprint") != fp:
            return False
        for name, meta in rec.get("files", {}).items():
            p = self.root / name
            try:
                if p.stat().st_size != meta["size"] or file_sha256(p) != meta["sha256"]:
                    return False
            except OSError:
                return False
        return True

    def commit(self, stage: str, fp: str, files: Sequence[str], seconds: float) -> None:
        """Stamp ``stage`` as done (after its artefacts are on disk); honours the kill test hook."""
        if self.is_main:
            rec = {"stage": stage, "fingerprint": fp, "seconds": round(seconds, 3),
                   "files": {f: {"size": (self.root / f).stat().st_size, "sha256": file_sha256(self.root / f)}
                             for f in files}}
            atomic_write_json(self._stamp(stage), rec)
        self.timings[stage] = seconds
        if os.environ.get(KILL_ENV) == stage:
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, stage: str, fp: str, files: Sequence[str], compute: Callable[[], None]) -> bool:
        """Run ``compute`` (which writes ``files``) unless a valid stamp exists; returns True when cached."""
        if self.valid(stage, fp):
            self.cached.append(stage)
            self.timings[stage] = 0.0
            _say(f"[{stage}] cached", self.quiet)
            return True
        t0 = time.perf_counter()
        _say(f"[{stage}] running", self.quiet)
        compute()
        dt = time.perf_counter() - t0
        self.commit(stage, fp, files, dt)
        _say(f"[{stage}] done in {dt:.1f}s", self.quiet)
        return False


def _stage_seed(seed: int, stage: str) -> int:
    """A seed per stage, so a stage gives the same result whether it runs after others or alone."""
    return int(np.random.SeedSequence([int(seed), *stage.encode()]).generate_state(1)[0] % (2**31))


def _seed(seed: int, stage: str) -> None:
    from sslguard.utils.seed import seed_everything

    seed_everything(_stage_seed(seed, stage))


def missing_arguments(fn: Callable[..., Any], available: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Required parameters of ``fn`` that neither ``available`` nor ``params`` provide."""
    sig = inspect.signature(fn)
    return [n for n, p in sig.parameters.items()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and n not in available and n not in params]


def call_with_supported(fn: Callable[..., Any], available: dict[str, Any], params: dict[str, Any]) -> Any:
    """Call ``fn`` with the ``available`` arguments it accepts plus ``params`` (user keyword arguments,
    which win). A required argument that is neither available nor given is an error naming it."""
    sig = inspect.signature(fn)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in available.items() if accepts_any or k in sig.parameters}
    kwargs.update(params)
    missing = missing_arguments(fn, available, params)
    if missing:
        raise TypeError(f"{getattr(fn, 'name', fn.__name__)}: the pipeline cannot supply {missing}")
    return fn(**kwargs)


# --------------------------------------------------------------------------------------------- data


@dataclass
class DataBundle:
    """The corpus to sanitise (poisoned view when attacks are injected) and what comes with it.

    ``manifest``/``attack`` are the main attack (the one the backdoor check triggers); ``manifests`` and
    ``attacks`` list every injected attack (main first, then ``extra_attack``); the ground truth is
    their union."""

    train: Any
    test: Any | None
    manifest: Any | None
    attack: Any | None
    root: str | None
    manifests: list[Any] = field(default_factory=list)
    attacks: list[Any] = field(default_factory=list)

    @property
    def keys(self) -> np.ndarray:
        return np.asarray(self.train.keys, dtype=np.int64)

    @property
    def truth(self) -> np.ndarray | None:
        if not self.manifests:
            return None
        return np.logical_or.reduce([m.is_poisoned(self.keys) for m in self.manifests])

    def attack_labels(self) -> list[str]:
        """A name per injected attack (its attack name, numbered when two share one)."""
        names = [m.attack for m in self.manifests]
        return [n if names.count(n) == 1 else f"{n}{i + 1}" for i, n in enumerate(names)]

    def paths(self) -> list[str]:
        return [p or "" for p in self.train.all_paths()]


def unpoisoned(dataset):
    """The dataset under every injected attack (the clean images, with their clean labels)."""
    from sslguard.data import PoisonedDataset

    while isinstance(dataset, PoisonedDataset):
        dataset = dataset.base
    return dataset


def load_data(cfg: DetectConfig) -> DataBundle:
    """Build the dataset (and test split), and inject ``cfg.attack`` (then ``cfg.extra_attack``) when set.

    The extra attack draws its poisons from the corpus as the first attack left it, so with the same
    target class a label-flip attack (whose pool is the other classes) never re-poisons an image."""
    from sslguard.data import build_dataset, poison_dataset
    from sslguard.data.attacks import build_attack

    d = cfg.data
    ds = build_dataset(d.name, d.split, d.root, d.subset_per_class, cfg.seed, d.on_error, d.image_size)
    test = None
    if d.test_split:
        # An image folder without that sub-folder would fall back to the root itself (the training
        # images), which would make every held-out number meaningless.
        has_split = d.name != "imagefolder" or (d.root is not None and (Path(d.root) / d.test_split).is_dir())
        if has_split:
            test = build_dataset(d.name, d.test_split, d.root, None, cfg.seed, d.on_error, d.image_size)
    manifests, attacks = [], []
    for a in (cfg.attack, cfg.extra_attack):
        if a is None:
            continue
        attack = build_attack(a.name, target=a.target, rate=a.rate, rate_of=a.rate_of, seed=a.seed, **a.params)
        ds, manifest = poison_dataset(ds, attack)
        manifests.append(manifest)
        attacks.append(attack)
    root = None
    if d.name == "imagefolder" and d.root is not None:
        root = str(Path(d.root) / d.split) if d.split and (Path(d.root) / d.split).is_dir() else str(d.root)
    return DataBundle(ds, test, manifests[0] if manifests else None, attacks[0] if attacks else None, root,
                      manifests, attacks)


def data_fingerprint(cfg: DetectConfig, data: DataBundle) -> str:
    """Configuration of the data and attack + the corpus itself (keys, labels, files' size and mtime)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.keys).tobytes())
    h.update(np.ascontiguousarray(np.asarray(data.train.labels, np.int64)).tobytes())
    for p in data.paths():
        if p:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for m in data.manifests:
        h.update(m.to_csv_text().encode())
    return fingerprint("data", to_dict(cfg.data), to_dict(cfg.attack), to_dict(cfg.extra_attack), cfg.seed,
                       h.hexdigest())


# ------------------------------------------------------------------------------------------ results


@dataclass
class RunResult:
    """What :func:`run_pipeline` (and :func:`sslguard.detect`) returns.

    ``detections`` maps detector name to its :class:`~sslguard.detectors.base.DetectionResult` (aligned
    with ``index``); ``fused`` is the combined result whose ``flagged`` decided the clean manifest;
    ``metrics`` (detector -> detection metrics) is empty without ground truth; ``paths`` names every
    artefact; ``summary`` is the content of ``summary.json`` (written when the report was made);
    ``cached_stages`` are the stages this call reused instead of running.
    """

    run_dir: Path
    index: np.ndarray
    detections: dict[str, Any]
    fused: Any
    flagged_indices: np.ndarray
    clean_indices: np.ndarray
    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)

    @property
    def report_path(self) -> Path:
        return self.paths["report"]

    def __repr__(self) -> str:
        return (f"RunResult(run_dir={str(self.run_dir)!r}, n={len(self.index)}, flagged={len(self.flagged_indices)}, "
                f"detectors={list(self.detections)})")


# -------------------------------------------------------------------------------------------- fusion


def normalised_scores(scores: np.ndarray, method: str) -> np.ndarray:
    """Scores on [0, 1]: percentile ranks (``rank_mean``) or min-max (``max_norm``); non-finite -> 0."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    out = np.zeros(len(s))
    if not ok.any():
        return out
    if method == "rank_mean":
        # Non-finite scores (images a detector did not examine) rank below every finite one.
        filled = np.where(ok, s, np.min(s[ok]) - 1.0)
        return (rankdata(filled, method="average") - 1.0) / max(1, len(s) - 1)
    lo, hi = float(s[ok].min()), float(s[ok].max())
    out[ok] = (s[ok] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def fuse(results: Sequence[Any], method: str = "rank_mean", flag: str = "any", fused_quantile: float = 0.95,
         no_vote: Sequence[str] = ()):
    """Combine aligned detection results into one :class:`DetectionResult` named ``fused``.

    See the module docstring for ``method`` and ``flag``. With one detector the fused flags are that
    detector's flags (for ``any``/``majority``/``all``). Detectors named in ``no_vote`` (implausible flag
    sets, :mod:`sslguard.plausibility`) enter the fused score but not the vote.
    """
    from sslguard.detectors.base import DetectionResult

    if not results:
        raise ValueError("fusion needs at least one detection result")
    index = results[0].index
    for r in results[1:]:
        if not np.array_equal(r.index, index):
            raise ValueError(f"{r.name}: not aligned with {results[0].name}")
    norm = np.stack([normalised_scores(r.scores, method) for r in results])
    fused = norm.mean(0) if method == "rank_mean" else norm.max(0)
    voters = [r for r in results if r.name not in set(no_vote)]
    votes = np.stack([r.flagged for r in voters]).sum(0) if voters else np.zeros(len(index), dtype=np.int64)
    threshold = float("nan")
    if flag == "any":
        flagged = votes >= 1
    elif flag == "all":
        flagged = votes == len(voters) if voters else np.zeros(len(index), dtype=bool)
    elif flag == "majority":
        flagged = votes * 2 > len(voters)
    elif flag == "fused":
        threshold = float(np.quantile(fused, fused_quantile))
        flagged = fused > threshold
    else:
        raise ValueError(f"fusion.flag: choose any, majority, all or fused, not {flag!r}")
    return DetectionResult("fused", index, fused, flagged, threshold, {"votes": votes},
                           {"method": method, "flag": flag, "detectors": [r.name for r in results],
                            "voters": [r.name for r in voters]})


# ----------------------------------------------------------------------------------------- pipeline


class Pipeline:
    """The stages of one run; :meth:`run` executes them in order (see the module docstring)."""

    def __init__(self, cfg: DetectConfig, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.accelerator = None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:  # launched by accelerate/torchrun: SSL training and embedding are shared
            import torch
            from accelerate import Accelerator

            # cpu=True on a machine without CUDA: a bare Accelerator() there sees no distributed setup,
            # and every process would believe it is the only (main) one and run the whole pipeline.
            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator is None or self.accelerator.is_main_process
        self.rd = RunDir(Path(cfg.output_dir) / cfg.name, quiet=quiet or not self.is_main, is_main=self.is_main)
        self.fp: dict[str, str] = {}
        self.encoder_path: Path | None = None  # set by stage_encoder
        self.notices: list[tuple[str, str]] = []  # (level, text) shown in the report and printed

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def notice(self, text: str, level: str = "info") -> None:
        self.notices.append((level, text))
        _say(f"note: {text}", self.quiet or not self.is_main)

    # ------------------------------------------------------------------ stages
    def stage_data(self) -> DataBundle:
        cfg, rd = self.cfg, self.rd
        data = load_data(cfg)
        if len(data.train.skipped):
            self.notice(f"{len(data.train.skipped)} input files could not be read and were skipped (listed in the report)",
                        "warn")
        fp = self.fp["data"] = data_fingerprint(cfg, data)
        stems = ["manifest", "manifest_extra"][: len(data.manifests)]
        files = ["dataset.json"] + [f"{st}.{ext}" for st in stems for ext in ("csv", "json")]

        def compute() -> None:
            if not self.is_main:
                return
            info = {"name": cfg.data.name, "root": data.root, "n": len(data.train), "classes": list(data.train.classes),
                    "keys": data.keys, "labels": np.asarray(data.train.labels), "paths": data.paths(),
                    "skipped": [{"path": s.path, "reason": s.reason} for s in data.train.skipped],
                    "n_test": len(data.test) if data.test is not None else 0}
            atomic_write_json(rd.path("dataset.json"), info)
            for st, m in zip(stems, data.manifests):
                m.save(rd.root, st)

        rd.run("data", fp, files, compute)
        self.barrier()
        return data

    def _ssl_meta(self) -> dict[str, Any]:
        return to_dict(self.cfg.ssl)

    def _train_encoder(self, dataset, data: DataBundle, out_path: Path, stage: str) -> None:
        """Train the SSL encoder on ``dataset`` with ``cfg.ssl`` and write it to ``out_path``; resumable
        per epoch. The kNN monitor (``ssl.knn_every``) uses the unpoisoned training set as its bank."""
        from sslguard.models.ssl import build_ssl_model, make_backbone
        from sslguard.train.augment import ssl_augmentations
        from sslguard.train.ssl import train_ssl

        s, size = self.cfg.ssl, self.cfg.data.image_size
        _seed(s.seed, stage)
        backbone = make_backbone(s.backbone, **s.backbone_args())
        model = build_ssl_model(s.method, backbone, **s.model_args())
        knn = s.knn_every > 0 and data.test is not None and data.test.has_labels and data.train.has_labels
        bank = unpoisoned(data.train)
        if knn and s.knn_train_per_class:
            from sslguard.data import subset_per_class

            bank = subset_per_class(bank, s.knn_train_per_class, s.seed)
        # A work folder per fingerprint: train_ssl resumes a matching checkpoint there, and a run with
        # other settings never meets a checkpoint it would refuse.
        work = self.rd.path(f".work/{stage}-{self.fp[stage]}")
        # batches are drop_last: a batch larger than a small corpus would leave no step at all
        batch = min(s.batch_size, len(dataset) - len(dataset) % max(1, self._world()))
        res = train_ssl(model, dataset, epochs=s.epochs, batch_size=batch, lr=s.lr, weight_decay=s.weight_decay,
                        optimizer=s.optimizer, warmup_epochs=s.warmup_epochs, image_size=size,
                        augment=ssl_augmentations(s.method, size, min_scale=s.min_scale), output_dir=work, seed=s.seed,
                        mixed_precision=s.mixed_precision, channels_last=s.channels_last,
                        checkpoint_every=s.checkpoint_every, resume=True, knn_every=s.knn_every if knn else 0,
                        knn_train=bank if knn else None, knn_test=data.test if knn else None, knn_k=s.knn_k,
                        knn_t=s.knn_t, num_workers=self.cfg.data.num_workers, accelerator=self.accelerator,
                        progress=not self.quiet)
        if self.is_main:
            from sslguard.utils.io import atomic_path

            with atomic_path(out_path, suffix=".safetensors") as tmp:
                shutil.copyfile(res.encoder_path, tmp)
            atomic_write_json(out_path.with_suffix(".history.json"), res.history)
            shutil.rmtree(work, ignore_errors=True)
            try:
                work.parent.rmdir()  # .work/ only when no other stage's work is left in it
            except OSError:
                pass

    def _world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    def stage_encoder(self, data: DataBundle):
        from sslguard.models.ssl import load_backbone

        cfg, rd = self.cfg, self.rd
        if cfg.encoder:
            self.encoder_path = Path(cfg.encoder)
            fp = self.fp["encoder"] = fingerprint("encoder-file", file_sha256(cfg.encoder))
            rd.run("encoder", fp, [], lambda: None)
            return load_backbone(cfg.encoder)
        self.encoder_path = rd.path("encoder.safetensors")
        fp = self.fp["encoder"] = fingerprint("encoder", self.fp["data"], self._ssl_meta(), cfg.data.image_size, cfg.seed)
        rd.run("encoder", fp, ["encoder.safetensors", "encoder.history.json"],
               lambda: self._train_encoder(data.train, data, rd.path("encoder.safetensors"), "encoder"))
        self.barrier()
        return load_backbone(rd.path("encoder.safetensors"))

    def stage_embed(self, data: DataBundle, backbone) -> np.ndarray:
        from sslguard.embed import embed_dataset

        cfg, rd = self.cfg, self.rd
        fp = self.fp["embed"] = fingerprint("embed", self.fp["data"], self.fp["encoder"], cfg.data.image_size)

        def compute() -> None:
            _seed(cfg.seed, "embed")
            keys, feats = embed_dataset(backbone, data.train, batch_size=cfg.embed.batch_size,
                                        image_size=cfg.data.image_size, accelerator=self.accelerator, normalize=True,
                                        progress=not self.quiet)
            if self.is_main:
                save_npy(rd.path("embeddings_index.npy"), keys.astype(np.int64))
                save_npy(rd.path("embeddings.npy"), feats.astype(np.float32))

        rd.run("embed", fp, ["embeddings.npy", "embeddings_index.npy"], compute)
        self.barrier()
        if not self.is_main:
            return np.zeros((0, 0), np.float32)
        index = np.load(rd.path("embeddings_index.npy"))
        if not np.array_equal(index, data.keys):
            raise RuntimeError(f"{rd.path('embeddings_index.npy')}: keys do not match the dataset")
        return np.load(rd.path("embeddings.npy"))

    def stage_cluster(self, embeddings: np.ndarray):
        from sslguard.cluster import ClusterResult, kmeans

        cfg, rd = self.cfg, self.rd
        c = cfg.cluster
        k = min(c.k, len(embeddings))
        fp = self.fp["cluster"] = fingerprint("cluster", self.fp["embed"], to_dict(c), k, cfg.seed)

        def compute() -> None:
            _seed(cfg.seed, "cluster")
            res = kmeans(embeddings, k, spherical=True, niter=c.niter, nredo=c.nredo, seed=cfg.seed, use_gpu=c.use_gpu)
            res.save(rd.path("clusters.npz"))

        rd.run("cluster", fp, ["clusters.npz"], compute)
        return ClusterResult.load(rd.path("clusters.npz"))

    def _run_detector(self, name: str, stage: str, fp: str, available: dict[str, Any]):
        from sslguard.detectors import get_detector
        from sslguard.detectors.base import DetectionResult

        rd = self.rd
        params = dict(self.cfg.detectors.params.get(name, {}))
        json_name, csv_name = f"detectors/{name}.json", f"detectors/{name}.csv"

        def compute() -> None:
            _seed(self.cfg.seed, stage)
            fn = get_detector(name)
            res = call_with_supported(fn, {**available, "seed": self.cfg.seed}, params)
            res = res.aligned(available["dataset"].keys)
            res.to_json(rd.path(json_name))
            res.to_csv(rd.path(csv_name))

        rd.run(stage, fp, [json_name, csv_name], compute)
        # Downstream always reads the artefact back, so a resumed run sees exactly what a full run saw.
        return DetectionResult.load_json(rd.path(json_name))

    def stage_ssl_detectors(self, data: DataBundle, backbone, embeddings, clusters) -> dict[str, Any]:
        cfg = self.cfg
        out = {}
        available = {"backbone": backbone, "dataset": data.train, "embeddings": embeddings, "clusters": clusters,
                     "k": clusters.k, "batch_size": cfg.detectors.batch_size, "image_size": cfg.data.image_size,
                     "progress": False}
        for name in cfg.detectors.ssl:
            stage = f"detector:{name}"
            fp = self.fp[stage] = fingerprint(stage, self.fp["cluster"], cfg.detectors.params.get(name, {}),
                                              cfg.detectors.batch_size, cfg.seed)
            out[name] = self._run_detector(name, stage, fp, available)
        return out

    def stage_classifier(self, data: DataBundle):
        """Train a supervised classifier on the (possibly poisoned) labeled corpus; None when unlabeled."""
        from safetensors.torch import load_file, save_file

        from sslguard.models.classifier import build_classifier
        from sslguard.train.classifier import evaluate_classifier, train_classifier
        from sslguard.utils.io import atomic_path

        cfg, rd = self.cfg, self.rd
        c = cfg.classifier
        if not data.train.has_labels:
            self.notice("the corpus has no labels: the classifier-stage detectors were skipped", "warn")
            return None
        n_classes = max(data.train.num_classes, int(np.max(data.train.labels)) + 1)
        on_encoder = c.mode != "scratch"
        fp = self.fp["classifier"] = fingerprint("classifier", self.fp["data"], to_dict(c), n_classes, cfg.seed,
                                                 self.fp["encoder"] if on_encoder else None)

        def build():
            if on_encoder:
                return build_classifier(encoder_path=str(self.encoder_path), num_classes=n_classes)
            return build_classifier(c.backbone, n_classes, width=c.width)

        def compute() -> None:
            _seed(cfg.seed, "classifier")
            model = build()
            hist = train_classifier(model, data.train, epochs=c.epochs, batch_size=min(c.batch_size, len(data.train)),
                                    lr=c.lr, mode=c.mode, seed=cfg.seed, augment=c.augment, optimizer=c.optimizer,
                                    weight_decay=c.weight_decay, image_size=cfg.data.image_size,
                                    progress=not self.quiet)
            with atomic_path(rd.path("classifier.safetensors"), suffix=".safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            ev: dict[str, Any] = {"train_loss": hist.loss, "train_accuracy": hist.accuracy, "seconds": hist.seconds}
            if data.test is not None and data.test.has_labels:
                ev.update(evaluate_classifier(model, data.test, None, image_size=cfg.data.image_size, seed=cfg.seed))
                ev.pop("asr", None)
                ev["asr"] = {}
                for label, attack in zip(data.attack_labels(), data.attacks):
                    ev["asr"][label] = evaluate_classifier(model, data.test, attack, image_size=cfg.data.image_size,
                                                           seed=cfg.seed)["asr"]
            atomic_write_json(rd.path("classifier.json"), ev)

        rd.run("classifier", fp, ["classifier.safetensors", "classifier.json"], compute)
        model = build()
        model.load_state_dict(load_file(str(rd.path("classifier.safetensors"))))
        return model.eval()

    def stage_classifier_detectors(self, data: DataBundle, model) -> dict[str, Any]:
        """Classifier-stage detectors. Those that need trusted clean images (``benign``: critical-layer
        analysis) get the held-out test split, which no attack touches; without one they are skipped.
        Those that can use them (``reference``: activation clustering, heatmap clustering and spectral
        signatures, to decide which class and which cluster is poisoned) get the same split."""
        from sslguard.detectors import get_detector

        cfg = self.cfg
        out = {}
        available = {"model": model, "dataset": data.train, "batch_size": cfg.detectors.batch_size,
                     "image_size": cfg.data.image_size, "progress": False}
        if data.test is not None and data.test.has_labels:
            available["benign"] = available["reference"] = data.test
        for name in cfg.detectors.classifier:
            missing = missing_arguments(get_detector(name), {**available, "seed": cfg.seed},
                                        cfg.detectors.params.get(name, {}))
            if missing:
                self.notice(f"{name} was skipped: it needs {', '.join(missing)} (for benign: a labeled "
                            "data.test_split)", "warn")
                continue
            stage = f"detector:{name}"
            fp = self.fp[stage] = fingerprint(stage, self.fp["classifier"], cfg.detectors.params.get(name, {}),
                                              cfg.detectors.batch_size, cfg.seed)
            out[name] = self._run_detector(name, stage, fp, available)
        return out

    def _backdoor_rates(self, backbone, data: DataBundle) -> dict[str, Any]:
        """kNN target rate (triggered vs random patch vs clean) and clean kNN accuracy of ``backbone``.

        The kNN bank is the *unpoisoned* training set (the same for every encoder compared), so the
        numbers measure what the encoder learned, not poisoned neighbours in the bank."""
        from sslguard.backdoor import triggered_target_rate
        from sslguard.knn import extract_features, knn_accuracy

        cfg = self.cfg
        bank, test, source = unpoisoned(data.train), data.test, "test split"
        if test is None or not test.has_labels:
            bank, test = self._held_out_bank(data)
            source = f"{len(test)} clean corpus images held out of the kNN bank (no labelled test split)"
        kw = dict(image_size=cfg.data.image_size, batch_size=cfg.embed.batch_size)
        rates = triggered_target_rate(backbone, bank, test, data.attack, data.attack.target, seed=cfg.seed, **kw)
        out = rates.to_dict()
        ftr, ltr, _ = extract_features(backbone, bank, **kw)
        fte, lte, _ = extract_features(backbone, test, **kw)
        out["knn_accuracy"] = knn_accuracy(ftr, ltr, fte, lte)
        out["test_images"] = source
        return out

    def _held_out_bank(self, data: DataBundle, share: float = 0.2, cap: int = 2000):
        """Without a labelled test split: a seeded ``share`` (at most ``cap``) of the corpus images that no
        attack touched, outside the target class, is the test set; the rest of the unpoisoned corpus is the
        kNN bank. An image is never its own neighbour, so the check still reads what the encoder learned."""
        clean = unpoisoned(data.train)
        truth = data.truth
        ok = np.flatnonzero((np.asarray(clean.labels) != data.attack.target) & ~truth)
        rng = np.random.default_rng([self.cfg.seed, 8])
        pick = np.sort(rng.choice(ok, size=min(cap, max(1, int(share * len(ok)))), replace=False))
        rest = np.setdiff1d(np.arange(len(clean)), pick)
        return clean.subset(rest), clean.subset(pick)

    def backdoor_possible(self, data: DataBundle) -> bool:
        # without a labelled test split the check holds out clean corpus images (``_held_out_bank``)
        return data.attack is not None and data.train.has_labels and data.truth is not None

    def stage_backdoor(self, data: DataBundle, backbone) -> dict[str, Any] | None:
        cfg, rd = self.cfg, self.rd
        if not self.backdoor_possible(data):
            return None
        fp = self.fp["backdoor"] = fingerprint("backdoor", self.fp["encoder"], self.fp["data"], cfg.data.test_split)

        def compute() -> None:
            _seed(cfg.seed, "backdoor")
            try:
                before: dict[str, Any] | None = self._backdoor_rates(backbone, data)
                reason = None
            except ValueError as exc:  # e.g. a global trigger: no patch size for the random-patch control
                before, reason = None, str(exc)
            atomic_write_json(rd.path("backdoor.json"), {"before": before, "unavailable": reason})

        rd.run("backdoor", fp, ["backdoor.json"], compute)
        return json.loads(rd.path("backdoor.json").read_text())

    def stage_fuse(self, data: DataBundle, detections: dict[str, Any]):
        """Fused score and flags; writes scores.csv and the sanitised lists."""
        import csv
        import io

        from sslguard.sanitize import write_clean_manifest

        cfg, rd = self.cfg, self.rd
        f = cfg.fusion
        names = [n for n in (f.detectors or list(detections)) if n in detections]
        if not names:
            raise ValueError("fusion: none of the detectors in fusion.detectors ran")
        no_vote = self._implausible(data, detections, names)
        fused = fuse([detections[n] for n in names], f.method, f.flag, f.fused_quantile, no_vote=no_vote)
        fp = self.fp["fuse"] = fingerprint("fuse", to_dict(f), names, [self.fp[f"detector:{n}"] for n in detections])
        truth = data.truth
        files = ["scores.csv", "flagged.txt", "clean_indices.txt"]
        has_paths = all(data.paths())
        if has_paths:
            files.append("clean_manifest.txt")

        def compute() -> None:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            cols = list(detections)
            w.writerow(["index", "path", "label", *cols, "fused", "flagged"] + (["poisoned"] if truth is not None else []))
            paths = data.paths()
            labels = np.asarray(data.train.labels)
            for i, k in enumerate(data.keys.tolist()):
                row = [k, paths[i], int(labels[i]), *(repr(float(detections[n].scores[i])) for n in cols),
                       repr(float(fused.scores[i])), int(fused.flagged[i])]
                if truth is not None:
                    row.append(int(truth[i]))
                w.writerow(row)
            atomic_write_text(rd.path("scores.csv"), buf.getvalue())
            write_clean_manifest(rd.root, data.train, fused.flagged_indices, root=data.root)

        rd.run("fuse", fp, files, compute)
        return fused

    def _implausible(self, data: DataBundle, detections: dict[str, Any], voting: Sequence[str]) -> list[str]:
        """Warn (first, in words) about every detector whose flags are implausible; those among ``voting``
        are returned so that they do not vote in the fused flags."""
        from sslguard.plausibility import implausible_flags

        f = self.cfg.fusion
        labels = np.asarray(data.train.labels) if data.train.has_labels else None
        out = []
        for name, r in detections.items():
            why = implausible_flags(r.flagged, labels, max_share=f.max_share, max_class_share=f.max_class_share)
            if why is None:
                continue
            role = "it does not vote in the fused flags" if name in voting else "it is not in the fused flags"
            self.notice(f"implausible flags from {name}: {why}; {role} (fusion.max_share / "
                        f"fusion.max_class_share)", "warn")
            if name in voting:
                out.append(name)
        return out

    def stage_retrain(self, data: DataBundle, fused, backdoor: dict[str, Any] | None) -> dict[str, Any] | None:
        """Train the encoder again on the clean manifest; compare backdoor and kNN numbers before/after."""
        from sslguard.models.ssl import load_backbone

        cfg, rd = self.cfg, self.rd
        if not cfg.retrain.enabled:
            return None
        clean_pos = np.flatnonzero(~fused.flagged)
        clean = data.train.subset(clean_pos)
        self.fp["retrain"] = fingerprint("retrain", self.fp["encoder"], self.fp["fuse"], clean.keys, self._ssl_meta())
        rd.run("retrain", self.fp["retrain"], ["encoder_clean.safetensors", "encoder_clean.history.json"],
               lambda: self._train_encoder(clean, data, rd.path("encoder_clean.safetensors"), "retrain"))
        fp = self.fp["retrain_eval"] = fingerprint("retrain_eval", self.fp["retrain"], self.fp.get("backdoor"))

        def compute() -> None:
            _seed(cfg.seed, "retrain_eval")
            out: dict[str, Any] = {"n_train_before": len(data.train), "n_train_after": len(clean)}
            if self.backdoor_possible(data) and (backdoor or {}).get("before"):
                out["before"] = backdoor["before"]
                out["after"] = self._backdoor_rates(load_backbone(rd.path("encoder_clean.safetensors")), data)
            atomic_write_json(rd.path("retrain.json"), out)

        rd.run("retrain_eval", fp, ["retrain.json"], compute)
        return json.loads(rd.path("retrain.json").read_text())

    def evaluate(self, data: DataBundle, detections: dict[str, Any], fused) -> dict[str, dict[str, float]]:
        from sslguard.metrics import detection_metrics

        truth = data.truth
        if truth is None:
            return {}
        results = {**detections, "fused": fused}
        out = {name: detection_metrics(r.scores, r.flagged, truth) for name, r in results.items()}
        if len(data.manifests) > 1:  # recall on each attack's poisons, to see which detector finds which
            for label, m in zip(data.attack_labels(), data.manifests):
                t = m.is_poisoned(data.keys)
                for name, r in results.items():
                    out[name][f"recall_{label}"] = float((r.flagged & t).sum() / max(1, t.sum()))
        return out

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult | None:
        """Run every stage; ``threads`` (when set) applies for the run and is restored afterwards."""
        if self.cfg.threads is None:
            return self._run()
        # Small CPU models gain little from intra-op threads, and on a shared machine extra OpenMP
        # threads spin against other processes (steps 10x slower with 2 threads on a busy 2-core box).
        import faiss
        import torch

        old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
        torch.set_num_threads(self.cfg.threads)
        faiss.omp_set_num_threads(self.cfg.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(old_torch)
            faiss.omp_set_num_threads(old_faiss)

    def _run(self) -> RunResult | None:
        cfg, rd = self.cfg, self.rd
        t_start = time.perf_counter()
        if self.is_main:
            atomic_write_text(rd.path("config.yaml"), dump_yaml(cfg))
            atomic_write_json(rd.path("versions.json"), package_versions())
        data = self.stage_data()
        backbone = self.stage_encoder(data)
        embeddings = self.stage_embed(data, backbone)
        if not self.is_main:
            return None  # the remaining stages are single-process
        clusters = self.stage_cluster(embeddings)
        detections = self.stage_ssl_detectors(data, backbone, embeddings, clusters)
        classifier_eval = model = None
        if cfg.detectors.classifier:
            model = self.stage_classifier(data)
            if model is not None:
                detections.update(self.stage_classifier_detectors(data, model))
                classifier_eval = json.loads(rd.path("classifier.json").read_text())
        if not detections:
            raise ValueError("detectors: no detector ran (detectors.ssl and detectors.classifier are empty or skipped)")
        backdoor = self.stage_backdoor(data, backbone)
        self._backdoor_notice(backdoor)
        fused = self.stage_fuse(data, detections)
        metrics = self.evaluate(data, detections, fused)
        retrain = self.stage_retrain(data, fused, backdoor)
        from sslguard.report.build import write_report

        summary = write_report(self, data, backbone, embeddings, clusters, detections, fused, metrics, backdoor,
                               retrain, classifier_eval, time.perf_counter() - t_start, classifier=model)
        paths = {n: rd.path(n) for n in ("config.yaml", "versions.json", "embeddings.npy", "clusters.npz", "scores.csv",
                                         "flagged.txt", "clean_indices.txt", "summary.json")}
        paths["report"] = rd.path("report.html")
        if rd.path("clean_manifest.txt").exists():
            paths["clean_manifest.txt"] = rd.path("clean_manifest.txt")
        paths["encoder"] = Path(cfg.encoder) if cfg.encoder else rd.path("encoder.safetensors")
        return RunResult(rd.root, data.keys, detections, fused, fused.flagged_indices, data.keys[~fused.flagged],
                         metrics, summary, paths, list(rd.cached))

    def _backdoor_notice(self, backdoor: dict[str, Any] | None) -> None:
        if backdoor and backdoor.get("unavailable"):
            self.notice(f"backdoor check not available: {backdoor['unavailable']}", "info")
        if not backdoor or not backdoor.get("before"):
            return
        b = backdoor["before"]
        trig, rand = b.get("triggered"), b.get("random_patch")
        if trig is None or rand is None:
            return
        margin = self.cfg.backdoor_margin
        if trig - rand < margin:
            self.notice(f"the SSL encoder did NOT learn the trigger: triggered test images go to the target class "
                        f"{trig:.1%} of the time vs {rand:.1%} with a random patch. SSL-stage detectors can only "
                        "find what the encoder learned, so expect them to miss these poisons.", "warn")
        else:
            text = (f"the SSL encoder learned the trigger: triggered test images go to the target class "
                    f"{trig:.1%} of the time vs {rand:.1%} with a random patch.")
            clean = b.get("clean")
            if clean is not None and rand - clean >= margin:
                text += (f" A random patch alone also pulls images there ({rand:.1%} vs {clean:.1%} clean): part of "
                         "what it learned is 'a patch', not this trigger only.")
            self.notice(text, "info")


def run_pipeline(cfg: DetectConfig, quiet: bool = False) -> RunResult | None:
    """Run (or resume) the whole pipeline for ``cfg``; returns None on non-main accelerate processes."""
    return Pipeline(cfg, quiet=quiet).run()


# ---------------------------------------------------------------------------------------- Python API


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into ``base`` (mappings merge; anything else, ``None`` included, replaces)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def load_detect_config(config: Any = None, overrides: Sequence[str] | None = None, **sections: Any) -> DetectConfig:
    """A validated :class:`DetectConfig` from a config file path, a mapping, a ``DetectConfig`` or nothing
    (defaults), with ``sections`` (top-level keys: ``data={...}``, ``attack=None``, ``name="x"``) merged in
    and dotted ``overrides`` (``["ssl.epochs=2"]``) applied last. Raises :class:`ConfigError` naming the key."""
    from sslguard.config import DetectConfig as _DC
    from sslguard.config import apply_overrides, from_dict, read_yaml

    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, _DC):
        data = to_dict(config)
    elif isinstance(config, dict):
        data = json.loads(to_json(config, indent=None))  # a deep copy; the caller's mapping is not changed
    elif isinstance(config, (str, os.PathLike)):
        data = read_yaml(config)
    else:
        raise TypeError(f"config must be a path, a mapping or a DetectConfig, not {type(config).__name__}")
    _merge(data, sections)
    apply_overrides(data, list(overrides or []))
    return from_dict(_DC, data)


def detect(config: Any = None, *, overrides: Sequence[str] | None = None, quiet: bool = False,
           **sections: Any) -> RunResult:
    """Run the detection pipeline from Python, exactly as ``scripts/detect.py`` does; returns a :class:`RunResult`.

    ``config``: a YAML path, a mapping, a :class:`DetectConfig` or ``None`` (defaults: digits, no attack).
    ``sections``: top-level keys merged over it, e.g. ``detect(data={"name": "imagefolder", "root": "pics"},
    attack=None, name="pics")``. ``overrides``: dotted ``key=value`` strings. A finished run with the same
    configuration is reused stage by stage (see the module docstring)."""
    cfg = load_detect_config(config, overrides, **sections)
    result = run_pipeline(cfg, quiet=quiet)
    if result is None:
        raise RuntimeError("sslguard.detect: this process is not the main process of a distributed launch")
    return result
