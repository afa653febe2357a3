"""The stages of one detection run (:class:`Pipeline`); see :mod:`sslguard.pipeline` for the artefacts."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from safetensors.torch import load_file, save_file

from sslguard.backdoor import control_patch_size, triggered_target_rates
from sslguard.cluster import ClusterResult, kmeans, resolve_k
from sslguard.config import DetectConfig, dump_yaml, to_dict
from sslguard.data import subset_per_class
from sslguard.detectors import DetectionResult, detector_spec, get_detector
from sslguard.embed import embed_dataset
from sslguard.knn import extract_features, knn_accuracy
from sslguard.metrics import detection_metrics
from sslguard.models.classifier import build_classifier
from sslguard.models.ssl import load_backbone
from sslguard.pipeline.data import DataBundle, data_fingerprint, held_out_bank, load_data, unpoisoned
from sslguard.pipeline.encoder import train_encoder
from sslguard.pipeline.fusion import fuse, implausible_detectors, scores_csv, stage_roles
from sslguard.pipeline.gallery import gallery_items
from sslguard.pipeline.result import RunResult
from sslguard.plausibility import uncorroborated_flags
from sslguard.report.build import ReportContext, write_report
from sslguard.sanitize import write_clean_manifest
from sslguard.train.classifier import evaluate_classifier, train_classifier
from sslguard.utils.io import atomic_path, atomic_write_json, atomic_write_text, file_sha256, package_versions, save_npy
from sslguard.utils.dist import broadcast_value
from sslguard.utils.rundir import RunDir, fingerprint, say, seed_stage


def call_with_supported(fn: Callable[..., Any], available: dict[str, Any], params: dict[str, Any]) -> Any:
    """Call ``fn`` with the ``available`` arguments it accepts plus ``params`` (user keyword arguments,
    which win). A required argument that is neither available nor given is an error naming it."""
    import inspect

    sig = inspect.signature(fn)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in available.items() if accepts_any or k in sig.parameters}
    kwargs.update(params)
    missing = [n for n, p in sig.parameters.items() if p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs]
    if missing:
        raise TypeError(f"{getattr(fn, 'name', fn.__name__)}: the pipeline cannot supply {missing}")
    return fn(**kwargs)


class Pipeline:
    """The stages of one run; :meth:`run` executes them in order (see the module docstring)."""

    def __init__(self, cfg: DetectConfig, quiet: bool = False, accelerator=None):
        self.cfg = cfg
        self.quiet = quiet
        if accelerator is None:
            import torch
            from accelerate import Accelerator

            # One accelerator for every stage, also for one process: its device is where the encoder, the
            # detectors and the classifier run. cpu=True on a machine without CUDA: a bare Accelerator()
            # there sees no distributed setup under torchrun, and every process would believe it is the
            # main one and run the whole pipeline.
            accelerator = Accelerator(mixed_precision=cfg.ssl.mixed_precision, cpu=not torch.cuda.is_available())
        self.accelerator = accelerator
        self.device = accelerator.device
        self.is_main = accelerator.is_main_process
        self.rd = RunDir(Path(cfg.output_dir) / cfg.name, quiet=quiet or not self.is_main, is_main=self.is_main)
        self.fp: dict[str, str] = {}
        self.encoder_path: Path | None = None  # set by stage_encoder
        self.notices: list[tuple[str, str]] = []  # (level, text) shown in the report and printed

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def _agree(self, cached: bool) -> bool:
        return bool(broadcast_value(cached, self.accelerator))

    def notice(self, text: str, level: str = "info") -> None:
        self.notices.append((level, text))
        say(f"note: {text}", self.quiet or not self.is_main)

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
        # compile and preload choose how the same run is computed (preload: the same batches; compile:
        # other float rounding, as another GPU would), not what is trained, so they leave caches valid
        return {k: v for k, v in to_dict(self.cfg.ssl).items() if k not in ("compile", "preload")}

    def _train_encoder(self, dataset, data: DataBundle, out_path: Path, stage: str) -> None:
        """Train the SSL encoder on ``dataset`` with ``cfg.ssl`` (:func:`~sslguard.pipeline.encoder.train_encoder`)
        and write it to ``out_path``; resumable per epoch. The kNN monitor (``ssl.knn_every``) uses the
        unpoisoned training set as its bank."""
        s = self.cfg.ssl
        seed_stage(s.seed, stage)
        knn = s.knn_every > 0 and data.test is not None and data.test.has_labels and data.train.has_labels
        bank = unpoisoned(data.train)
        if knn and s.knn_train_per_class:
            bank = subset_per_class(bank, s.knn_train_per_class, s.seed)
        # A work folder per fingerprint: train_ssl resumes a matching checkpoint there, and a run with
        # other settings never meets a checkpoint it would refuse.
        work = self.rd.path(f".work/{stage}-{self.fp[stage]}")
        # batches are drop_last: a batch larger than a small corpus would leave no step at all
        batch = min(s.batch_size, len(dataset) - len(dataset) % max(1, self._world()))
        res = train_encoder(s, dataset, image_size=self.cfg.data.image_size, output_dir=work, batch_size=batch,
                            knn_train=bank if knn else None, knn_test=data.test if knn else None,
                            num_workers=self.cfg.data.num_workers, accelerator=self.accelerator, progress=not self.quiet)
        if self.is_main:
            with atomic_path(out_path, suffix=".safetensors") as tmp:
                shutil.copyfile(res.encoder_path, tmp)
            atomic_write_json(out_path.with_suffix(".history.json"), res.history)
            shutil.rmtree(work, ignore_errors=True)
            try:
                work.parent.rmdir()  # .work/ only when no other stage's work is left in it
            except OSError:
                pass

    def _world(self) -> int:
        return self.accelerator.num_processes

    def stage_encoder(self, data: DataBundle):
        cfg, rd = self.cfg, self.rd
        if cfg.encoder:
            self.encoder_path = Path(cfg.encoder)
            fp = self.fp["encoder"] = fingerprint("encoder-file", file_sha256(cfg.encoder))
            rd.run("encoder", fp, [], lambda: None)
            return load_backbone(cfg.encoder).to(self.device)
        self.encoder_path = rd.path("encoder.safetensors")
        fp = self.fp["encoder"] = fingerprint("encoder", self.fp["data"], self._ssl_meta(), cfg.data.image_size, cfg.seed)
        rd.run("encoder", fp, ["encoder.safetensors", "encoder.history.json"],
               lambda: self._train_encoder(data.train, data, rd.path("encoder.safetensors"), "encoder"))
        self.barrier()
        return load_backbone(rd.path("encoder.safetensors")).to(self.device)

    def stage_embed(self, data: DataBundle, backbone) -> np.ndarray:
        cfg, rd = self.cfg, self.rd
        fp = self.fp["embed"] = fingerprint("embed", self.fp["data"], self.fp["encoder"], cfg.data.image_size)

        def compute() -> None:
            seed_stage(cfg.seed, "embed")
            # streamed into the file batch by batch (every process writes its batches): never whole in memory
            keys, _ = embed_dataset(backbone, data.train, batch_size=cfg.embed.batch_size,
                                    image_size=cfg.data.image_size, accelerator=self.accelerator, normalize=True,
                                    progress=not self.quiet, out_path=rd.path("embeddings.npy"))
            if self.is_main:
                save_npy(rd.path("embeddings_index.npy"), keys.astype(np.int64))

        rd.run("embed", fp, ["embeddings.npy", "embeddings_index.npy"], compute)
        self.barrier()
        index = np.load(rd.path("embeddings_index.npy"))
        if not np.array_equal(index, data.keys):
            raise RuntimeError(f"{rd.path('embeddings_index.npy')}: keys do not match the dataset")
        return np.load(rd.path("embeddings.npy"), mmap_mode="r")  # read-only and paged in: corpora past memory

    def stage_cluster(self, embeddings: np.ndarray):
        cfg, rd = self.cfg, self.rd
        c = cfg.cluster
        k = resolve_k(c.k, len(embeddings))
        fp = self.fp["cluster"] = fingerprint("cluster", self.fp["embed"], to_dict(c), k, cfg.seed)

        def compute() -> None:
            if not self.is_main:  # one process clusters (faiss uses its threads or the GPU); the others read it
                return
            seed_stage(cfg.seed, "cluster")
            res = kmeans(embeddings, k, spherical=True, niter=c.niter, nredo=c.nredo, seed=cfg.seed, use_gpu=c.use_gpu)
            res.save(rd.path("clusters.npz"))

        rd.run("cluster", fp, ["clusters.npz"], compute)
        self.barrier()
        return ClusterResult.load(rd.path("clusters.npz"))

    def _run_detector(self, name: str, stage: str, fp: str, available: dict[str, Any]):
        """Run one registered detector on every process (the per-image work is split among them, see
        :func:`sslguard.utils.dist.map_chunks`); the main process writes its artefacts."""
        rd = self.rd
        params = dict(self.cfg.detectors.params.get(name, {}))
        json_name, csv_name = f"detectors/{name}.json", f"detectors/{name}.csv"
        available = {**available, "seed": self.cfg.seed, "accelerator": self.accelerator, "device": self.device}

        def compute() -> None:
            seed_stage(self.cfg.seed, stage)
            res = call_with_supported(get_detector(name), available, params)
            if self.is_main:
                res = res.aligned(available["dataset"].keys)
                res.to_json(rd.path(json_name))
                res.to_csv(rd.path(csv_name))

        rd.run(stage, fp, [json_name, csv_name], compute)
        self.barrier()
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
                return build_classifier(encoder_path=str(self.encoder_path), num_classes=n_classes).to(self.device)
            return build_classifier(c.backbone, n_classes, width=c.width).to(self.device)

        def compute() -> None:
            # one process trains on the accelerator's device (the others wait and load the weights), unless
            # classifier.data_parallel asks for accelerate's data-parallel training over all of them
            shared = c.data_parallel and self._world() > 1
            if not (self.is_main or shared):
                return
            seed_stage(cfg.seed, "classifier")
            model = build()
            hist = train_classifier(model, data.train, epochs=c.epochs, batch_size=min(c.batch_size, len(data.train)),
                                    lr=c.lr, mode=c.mode, seed=cfg.seed, augment=c.augment, optimizer=c.optimizer,
                                    weight_decay=c.weight_decay, image_size=cfg.data.image_size,
                                    accelerator=self.accelerator if shared else None, progress=not self.quiet)
            if not self.is_main:
                return
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
        self.barrier()
        model = build()
        model.load_state_dict(load_file(str(rd.path("classifier.safetensors"))))  # copied onto the model's device
        return model.eval()

    def stage_classifier_detectors(self, data: DataBundle, model) -> dict[str, Any]:
        """Classifier-stage detectors. Those that need trusted clean images (``benign``: critical-layer
        analysis) get the held-out test split, which no attack touches; without one they are skipped.
        Those that can use them (``reference``: activation clustering, heatmap clustering and spectral
        signatures, to decide which class and which cluster is poisoned) get the same split."""
        cfg = self.cfg
        out = {}
        available = {"model": model, "dataset": data.train, "batch_size": cfg.detectors.batch_size,
                     "image_size": cfg.data.image_size, "progress": False}
        if data.test is not None and data.test.has_labels:
            available["benign"] = available["reference"] = data.test
        for name in cfg.detectors.classifier:
            missing = detector_spec(name).missing(available, cfg.detectors.params.get(name, {}))
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
        numbers measure what the encoder learned, not poisoned neighbours in the bank: what a downstream
        classifier trained on clean labels would inherit. ``triggered_corpus_bank``,
        ``random_patch_corpus_bank`` and ``clean_corpus_bank`` are the same rates with the corpus itself as the
        bank (its poisons included): whether triggered images land among the poisons, i.e. whether the encoder tied the trigger
        to them, which is what a cluster-based detector needs. A BYOL encoder can gather triggered images
        in a group of their own, away from every clean image: then only the second pair shows it."""
        cfg = self.cfg
        bank, test, source, corpus_bank = unpoisoned(data.train), data.test, "test split", data.train
        if test is None or not test.has_labels:
            bank, test = held_out_bank(data, cfg.seed)
            source = f"{len(test)} clean corpus images held out of the kNN bank (no labelled test split)"
            corpus_bank = data.train.subset(np.flatnonzero(np.isin(data.keys, bank.keys)))
        kw = dict(image_size=cfg.data.image_size, batch_size=cfg.embed.batch_size, device=self.device)
        size = control_patch_size(data.attack, cfg.data.image_size)
        both = triggered_target_rates(backbone, {"clean": bank, "corpus": corpus_bank}, test, data.attack,
                                      data.attack.target, seed=cfg.seed, patch_size=size, **kw)
        out, tied = both["clean"].to_dict(), both["corpus"]
        out["triggered_corpus_bank"], out["random_patch_corpus_bank"] = tied.triggered, tied.random_patch
        out["clean_corpus_bank"] = tied.clean
        ftr, ltr, _ = extract_features(backbone, bank, **kw)
        fte, lte, _ = extract_features(backbone, test, **kw)
        out["knn_accuracy"] = knn_accuracy(ftr, ltr, fte, lte)
        out["test_images"] = source
        return out

    def backdoor_possible(self, data: DataBundle) -> bool:
        # without a labelled test split the check holds out clean corpus images (``held_out_bank``)
        return data.attack is not None and data.train.has_labels and data.truth is not None

    def stage_backdoor(self, data: DataBundle, backbone) -> dict[str, Any] | None:
        cfg, rd = self.cfg, self.rd
        if not self.backdoor_possible(data):
            return None
        fp = self.fp["backdoor"] = fingerprint("backdoor", self.fp["encoder"], self.fp["data"], cfg.data.test_split)

        def compute() -> None:
            seed_stage(cfg.seed, "backdoor")
            try:
                before: dict[str, Any] | None = self._backdoor_rates(backbone, data)
                reason = None
            except ValueError as exc:  # e.g. a test split with no image outside the target class
                before, reason = None, str(exc)
            atomic_write_json(rd.path("backdoor.json"), {"before": before, "unavailable": reason})

        rd.run("backdoor", fp, ["backdoor.json"], compute)
        return json.loads(rd.path("backdoor.json").read_text())

    def stage_fuse(self, data: DataBundle, detections: dict[str, Any]):
        """Fused score and flags; writes scores.csv and the sanitised lists."""
        cfg, rd = self.cfg, self.rd
        f = cfg.fusion
        names = [n for n in (f.detectors or list(detections)) if n in detections]
        if not names:
            raise ValueError("fusion: none of the detectors in fusion.detectors ran")
        no_vote = self._implausible(data, detections, names)
        fused = fuse([detections[n] for n in names], f.method, f.flag, f.fused_quantile, no_vote=no_vote,
                     labels=np.asarray(data.train.labels) if data.train.has_labels else None, **stage_roles(names))
        # the rule's name: runs cached under the every-detector rule are recomputed
        fp = self.fp["fuse"] = fingerprint("fuse", to_dict(f), names, [self.fp[f"detector:{n}"] for n in detections],
                                           "agree: two votes, class vote", "ranked: detectors with flags")
        truth = data.truth
        files = ["scores.csv", "flagged.txt", "clean_indices.txt"]
        has_paths = all(data.paths())
        if has_paths:
            files.append("clean_manifest.txt")

        def compute() -> None:
            text = scores_csv(data.keys, data.paths(), np.asarray(data.train.labels), detections, fused, truth)
            atomic_write_text(rd.path("scores.csv"), text)
            write_clean_manifest(rd.root, data.train, fused.flagged_indices, root=data.root)

        rd.run("fuse", fp, files, compute)
        return fused

    def _implausible(self, data: DataBundle, detections: dict[str, Any], voting: Sequence[str]) -> list[str]:
        """Warn (first, in words) about every detector whose flags are implausible; those among ``voting``
        are returned so that they do not vote in the fused flags."""
        f = self.cfg.fusion
        labels = np.asarray(data.train.labels) if data.train.has_labels else None
        out = []
        for name, text, votes in implausible_detectors(detections, labels, voting, f.max_share, f.max_class_share):
            self.notice(text, "warn")
            if votes:
                out.append(name)
        groups = stage_roles([n for n in voting if n not in out])["groups"]
        lone = uncorroborated_flags({n: detections[n].flagged for n in groups}, groups)
        for name, why in lone.items():
            self.notice(f"uncorroborated flags from {name}: {why}"
                        + ("; fusion.flag agree counts them only where another detector agrees"
                           if f.flag == "agree" else ""), "warn")
        return out

    def stage_retrain(self, data: DataBundle, fused, backdoor: dict[str, Any] | None) -> dict[str, Any] | None:
        """Train the encoder again on the clean manifest; compare backdoor and kNN numbers before/after."""
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
            seed_stage(cfg.seed, "retrain_eval")
            out: dict[str, Any] = {"n_train_before": len(data.train), "n_train_after": len(clean)}
            if self.backdoor_possible(data) and (backdoor or {}).get("before"):
                out["before"] = backdoor["before"]
                out["after"] = self._backdoor_rates(load_backbone(rd.path("encoder_clean.safetensors")).to(self.device),
                                                    data)
            atomic_write_json(rd.path("retrain.json"), out)

        rd.run("retrain_eval", fp, ["retrain.json"], compute)
        return json.loads(rd.path("retrain.json").read_text())

    def evaluate(self, data: DataBundle, detections: dict[str, Any], fused) -> dict[str, dict[str, float]]:
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
        # Every process runs the stages up to the classifier-stage detectors (training, embedding and the
        # detectors' per-image work are split among them); the main process decides what is cached.
        rd.agree = self._agree if self._world() > 1 else None
        try:
            data = self.stage_data()
            backbone = self.stage_encoder(data)
            embeddings = self.stage_embed(data, backbone)
            clusters = self.stage_cluster(embeddings)
            detections = self.stage_ssl_detectors(data, backbone, embeddings, clusters)
            model = None
            if cfg.detectors.classifier:
                model = self.stage_classifier(data)
                if model is not None:
                    detections.update(self.stage_classifier_detectors(data, model))
        finally:
            rd.agree = None
        if not self.is_main:
            return None  # the remaining stages (backdoor check, fusion, report) are the main process's
        classifier_eval = json.loads(rd.path("classifier.json").read_text()) if model is not None else None
        if not detections:
            raise ValueError("detectors: no detector ran (detectors.ssl and detectors.classifier are empty or skipped)")
        backdoor = self.stage_backdoor(data, backbone)
        self._backdoor_notice(backdoor)
        fused = self.stage_fuse(data, detections)
        metrics = self.evaluate(data, detections, fused)
        retrain = self.stage_retrain(data, fused, backdoor)
        summary = write_report(self._report_context(data, backbone, embeddings, clusters, detections, fused, metrics,
                                                    backdoor, retrain, classifier_eval, model,
                                                    time.perf_counter() - t_start))
        paths = {n: rd.path(n) for n in ("config.yaml", "versions.json", "embeddings.npy", "clusters.npz", "scores.csv",
                                         "flagged.txt", "clean_indices.txt", "summary.json")}
        paths["report"] = rd.path("report.html")
        if rd.path("clean_manifest.txt").exists():
            paths["clean_manifest.txt"] = rd.path("clean_manifest.txt")
        paths["encoder"] = Path(cfg.encoder) if cfg.encoder else rd.path("encoder.safetensors")
        return RunResult(rd.root, data.keys, detections, fused, fused.flagged_indices, data.keys[~fused.flagged],
                         metrics, summary, paths, list(rd.cached))

    def _report_context(self, data, backbone, embeddings, clusters, detections, fused, metrics, backdoor, retrain,
                        classifier_eval, model, seconds: float) -> ReportContext:
        cfg = self.cfg

        def gallery(top: np.ndarray):
            return gallery_items(top, data=data, detections=detections, fused=fused, backbone=backbone,
                                 clusters=clusters, classifier=model, classifier_detectors=cfg.detectors.classifier,
                                 image_size=cfg.data.image_size)

        return ReportContext(cfg, self.rd, data, embeddings, clusters.assignments, detections, fused, metrics, backdoor,
                             retrain, classifier_eval, seconds, gallery, dict(self.fp), list(self.notices))

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
        trig_c, rand_c, clean_c = (b.get(f"{k}_corpus_bank") for k in ("triggered", "random_patch", "clean"))
        tied = None not in (trig_c, rand_c, clean_c) and trig_c - clean_c >= margin
        if trig - rand < margin and tied:
            text = (f"the SSL encoder tied the trigger to the poisons: with the corpus as the kNN bank, triggered test "
                    f"images go to the target class {trig_c:.1%} of the time vs {clean_c:.1%} clean, so SSL-stage "
                    f"detectors can find them; with clean references only {trig:.1%} do (vs {rand:.1%} with a random "
                    "patch): the triggered images form a group of their own, which a classifier trained on clean "
                    "labels may not send to the target.")
            if rand_c - clean_c >= margin:
                text += f" A random patch lands among the poisons too ({rand_c:.1%}): it learned 'a patch like it'."
            self.notice(text, "info")
        elif trig - rand < margin:
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

