"""The sections of ``scripts/detect.py`` / :func:`sslguard.detect` (:class:`DetectConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from sslguard.config.machinery import check
from sslguard.config.sections import AttackConfig, DataConfig, SSLConfig


@dataclass
class EmbedConfig:
    batch_size: int = 256

    def validate(self, key: str = "embed") -> None:
        check(self.batch_size > 0, f"{key}.batch_size", "must be positive")


@dataclass
class DetectClusterConfig:
    """FAISS k-means of the embeddings (sslguard.cluster.kmeans), shared by the SSL-stage detectors."""

    # clusters, capped at the number of images: an integer, or "auto" (sslguard.cluster.resolve_k: about
    # 100 images per cluster, at least 20, so a small poison share is still a cluster's worth of images).
    # At least twice a 10-class corpus' classes: k must exceed the natural groups (classes, classes with
    # two modes, one trigger group per attack), or k-means merges the trigger group into its clean twin and
    # whether it does flips with the CPU's float order (quickstart at k=10: isolated on AVX-512 kernels,
    # merged on SSE4.1; planted encoder: merged up to k=12, isolated from 13 on).
    k: Union[int, str] = "auto"
    niter: int = 25
    nredo: int = 1
    use_gpu: Optional[bool] = None  # None: GPU when faiss-gpu sees one

    def validate(self, key: str = "cluster") -> None:
        check(self.k == "auto" if isinstance(self.k, str) else self.k >= 1, f"{key}.k",
              f"must be a positive integer or auto, got {self.k!r}")
        check(self.niter >= 1, f"{key}.niter", "must be >= 1")
        check(self.nredo >= 1, f"{key}.nredo", "must be >= 1")


@dataclass
class DetectClassifierConfig:
    """The supervised classifier the classifier-stage detectors inspect, trained on the (possibly poisoned)
    labeled corpus. ``mode``: ``scratch`` (a new ``backbone``), or ``linear`` / ``finetune`` on the SSL encoder."""

    mode: str = "scratch"  # scratch | linear | finetune
    backbone: str = "convnet4"  # for mode=scratch
    width: Optional[int] = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    weight_decay: float = 5e-4
    augment: bool = True  # random crop + flip
    # false: one process trains it on the accelerator's device and the others load it, so the run's
    # scores do not depend on the process count; true: data-parallel over all processes (faster on
    # several GPUs; the weights then depend on the process count, as the SSL encoder's do)
    data_parallel: bool = False

    def validate(self, key: str = "classifier") -> None:
        from sslguard.models.backbones import BACKBONES

        check(self.mode in ("scratch", "linear", "finetune"), f"{key}.mode", "choose scratch, linear or finetune")
        check(self.backbone in BACKBONES or self.backbone.startswith("timm:"), f"{key}.backbone",
               f"unknown backbone {self.backbone!r}; choose from {', '.join(sorted(BACKBONES))} or timm:<name>")
        check(self.width is None or self.width > 0, f"{key}.width", "must be positive")
        check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        check(self.lr > 0, f"{key}.lr", "must be positive")
        check(self.optimizer in ("sgd", "adamw"), f"{key}.optimizer", "choose sgd or adamw")
        check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")


@dataclass
class DetectorsConfig:
    """Which detectors run. SSL-stage ones score with the encoder + clusters; classifier-stage ones with a
    classifier trained on the labeled corpus (skipped on unlabeled data). ``params.<detector>`` holds
    that detector's keyword arguments (checked against its signature)."""

    ssl: list[str] = field(default_factory=lambda: ["poisoncam", "patchsearch", "density"])  # need the encoder + clusters
    classifier: list[str] = field(default_factory=lambda: ["activation_clustering", "spectral"])  # need labels
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {poisoncam: {z: 3.0}}
    batch_size: int = 256

    def validate(self, key: str = "detectors") -> None:
        from sslguard.detectors import STAGE_INPUTS, detector_spec, list_detectors

        known = list_detectors()
        for group in ("ssl", "classifier"):
            for i, name in enumerate(getattr(self, group)):
                k = f"{key}.{group}[{i}]"
                check(name in known, k, f"unknown detector {name!r}; choose from {', '.join(known)}")
                spec = detector_spec(name)
                check(spec.stage == group, k, f"{name} is a {spec.stage}-stage detector (list it under "
                      f"{key}.{spec.stage})")
                missing = spec.missing(set(STAGE_INPUTS[group]), self.params.get(name, {}))
                check(not missing, k, f"{name} needs {', '.join(missing)}, which the {group} stage does not provide")
        for name, params in self.params.items():
            # parameters of a detector that is switched off are kept (and checked), so that turning a
            # detector off on the command line does not make the config file's own entries errors
            check(name in known, f"{key}.params.{name}", f"unknown detector {name!r}; choose from {', '.join(known)}")
            check(isinstance(params, dict), f"{key}.params.{name}", "must be a mapping of keyword arguments")
            accepted = detector_spec(name).settable()
            for p in params:
                check(p in accepted, f"{key}.params.{name}.{p}",
                      f"not a parameter of {name} (known: {', '.join(accepted)})")
        check(self.batch_size > 0, f"{key}.batch_size", "must be positive")


@dataclass
class FusionConfig:
    """How detector scores are combined and which images are flagged (see sslguard.pipeline)."""

    method: str = "rank_mean"  # rank_mean | max_norm
    # any | agree | majority | all | fused (sslguard.pipeline.fusion). agree: within a stage, images two of its
    # detectors flag, plus a clustering detector's flags in a class another detector also flags (the lone
    # detector's flags when only one flagged anything); stages add up. Why: the detectors of a stage err
    # independently (a clean cluster, a per-class budget, a per-image cut), so two votes drop one detector's
    # strays or runaway class, and the class vote keeps a whole poison cluster that the per-image detectors
    # only partly find. On benchmarks/classifier_generalization.md it met P >= 0.8 at R >= 0.9 in more
    # learned cases than the union (any), two votes alone or every detector's intersection, iid and shifted
    # trusted sets alike; on the SSL stage's grid12 case (generalization.md) the union had F1 0.85, agree 0.999.
    flag: str = "agree"
    fused_quantile: float = 0.95  # with flag=fused: flag images above this quantile of the fused score
    detectors: Optional[list[str]] = None  # detectors that take part; null = every detector that ran
    # A detector whose flags are implausible (sslguard.plausibility) is named in a warning and does not vote:
    # over max_share of the corpus, or flags in over max_class_share of the classes. A fifth, because no
    # benchmark case here poisons more than 10% of a corpus and one runaway detector removed 49% of a held-out
    # MNIST corpus under "any"; half the classes, because an all-to-one backdoor's poisons share one label.
    # null switches a rule off (all-to-all attacks, mostly poisoned corpora).
    max_share: Optional[float] = 0.2
    max_class_share: Optional[float] = 0.5

    def validate(self, key: str = "fusion") -> None:
        check(self.method in ("rank_mean", "max_norm"), f"{key}.method", "choose rank_mean or max_norm")
        check(self.flag in ("any", "agree", "majority", "all", "fused"), f"{key}.flag",
              "choose any, agree, majority, all or fused")
        for name in ("max_share", "max_class_share"):
            v = getattr(self, name)
            check(v is None or 0.0 < v <= 1.0, f"{key}.{name}", "must be in (0, 1] or null")
        check(0.0 < self.fused_quantile < 1.0, f"{key}.fused_quantile", "must be in (0, 1)")


@dataclass
class ReportConfig:
    top_k: int = 24  # flagged images shown with their Grad-CAM overlay
    max_rows: int = 200  # rows of the flagged-image table in report.html
    embedding: str = "pca"  # pca | tsne (slow on many points)

    def validate(self, key: str = "report") -> None:
        check(self.top_k >= 0, f"{key}.top_k", "must be >= 0")
        check(self.max_rows >= 0, f"{key}.max_rows", "must be >= 0")
        check(self.embedding in ("pca", "tsne"), f"{key}.embedding", "choose pca or tsne")


@dataclass
class RetrainConfig:
    """Train the encoder again on the clean manifest (same ``ssl`` settings) and report clean kNN accuracy and
    the triggered target rate before and after."""

    enabled: bool = False  # costs a second SSL training

    def validate(self, key: str = "retrain") -> None:
        """Nothing to check: the retraining reuses the validated ``ssl`` section."""


@dataclass
class DetectConfig:
    """``scripts/detect.py`` / :func:`sslguard.detect`: sanitise ``data`` (optionally poisoned with ``attack``)
    and write everything to ``output_dir/name/``."""

    CONFIG_FOLDER: ClassVar[str] = "detect"  # shipped configs: sslguard/configs/detect/

    name: str = "run"  # the run's folder is output_dir/name
    output_dir: str = "runs"  # never inside data.root
    seed: int = 0  # seeds subsets, clustering, detectors and the classifier (ssl.seed seeds SSL training)
    threads: Optional[int] = None  # CPU threads for torch and faiss (null: their default); 1 suits small models
    data: DataConfig = field(default_factory=DataConfig)
    attack: Optional[AttackConfig] = None  # inject a known attack (ground truth -> metrics); null: the data as is
    extra_attack: Optional[AttackConfig] = None  # a second attack in the same corpus (e.g. a BadNets label flip)
    encoder: Optional[str] = None  # an encoder .safetensors to use instead of training one
    ssl: SSLConfig = field(default_factory=SSLConfig)  # the encoder trained here (ssl.seed seeds its training)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: DetectClusterConfig = field(default_factory=DetectClusterConfig)
    detectors: DetectorsConfig = field(default_factory=DetectorsConfig)
    classifier: DetectClassifierConfig = field(default_factory=DetectClassifierConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    backdoor_margin: float = 0.1  # triggered minus random-patch target rate below this: "trigger not learned"

    def validate(self) -> None:
        check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
               f"must be a plain folder name, got {self.name!r}")
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        self.data.validate("data")
        if self.data.root is not None and self.data.name == "imagefolder":
            out = Path(self.output_dir).resolve()
            root = Path(self.data.root).resolve()
            check(out != root and root not in out.parents, "output_dir",
                   f"must not be inside the source folder {root} (the source is never written)")
        if self.attack is not None:
            self.attack.validate("attack")
        if self.extra_attack is not None:
            check(self.attack is not None, "extra_attack", "needs an attack (set attack first)")
            self.extra_attack.validate("extra_attack")
        check(self.encoder is None or Path(self.encoder).is_file(), "encoder", f"file not found: {self.encoder}")
        for section in ("ssl", "embed", "cluster", "detectors", "classifier", "fusion", "retrain", "report"):
            v = getattr(getattr(self, section), "validate", None)
            if v is not None:
                v(section)
        check(len(self.detectors.ssl) + len(self.detectors.classifier) > 0, "detectors",
               "no detector selected (detectors.ssl and detectors.classifier are both empty)")
        for i, name in enumerate(self.fusion.detectors or []):
            check(name in self.detectors.ssl or name in self.detectors.classifier, f"fusion.detectors[{i}]",
                   f"{name!r} is not one of the detectors that run")
