"""Config sections shared by the scripts: the data, an attack, SSL training, poisoning.

Each section is a dataclass with a ``validate()`` that raises :class:`~sslguard.config.machinery.ConfigError`
naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from sslguard.config.machinery import check


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | imagefolder
    root: Optional[str] = None
    split: str = "train"
    test_split: Optional[str] = "test"  # held-out split for kNN / ASR; None when there is none
    subset_per_class: Optional[int] = None
    image_size: int = 32
    on_error: str = "skip"  # skip | raise, for unreadable image files
    num_workers: int = 0

    def validate(self, key: str = "data") -> None:
        check(self.name in ("digits", "cifar10", "imagefolder"), f"{key}.name",
               f"unknown dataset {self.name!r}; choose from digits, cifar10, imagefolder")
        check(self.name != "imagefolder" or self.root is not None, f"{key}.root", "an imagefolder dataset needs a root")
        check(self.root is None or self.name == "digits" or Path(self.root).exists(), f"{key}.root",
               f"path does not exist: {self.root}")
        check(self.subset_per_class is None or self.subset_per_class > 0, f"{key}.subset_per_class", "must be positive")
        check(self.image_size > 0, f"{key}.image_size", "must be positive")
        check(self.on_error in ("skip", "raise"), f"{key}.on_error", "must be skip or raise")
        check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")


@dataclass
class AttackConfig:
    name: str = "htba"
    target: int = 0
    rate: float = 0.5
    rate_of: str = "target"  # target | dataset
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # attack-specific keyword arguments

    def validate(self, key: str = "attack") -> None:
        check(0.0 <= self.rate <= 1.0, f"{key}.rate", f"must be in [0, 1], got {self.rate}")
        check(self.rate_of in ("target", "dataset"), f"{key}.rate_of", "must be target or dataset")
        check(self.target >= 0, f"{key}.target", "must be a class id >= 0")
        import inspect

        from sslguard.data.attacks import ATTACKS, list_attacks

        names = list_attacks()
        check(self.name in names, f"{key}.name", f"unknown attack {self.name!r}; choose from {', '.join(names)}")
        sig = inspect.signature(ATTACKS[self.name].__init__)
        known = [p for p in sig.parameters if p not in ("self", "target", "rate", "rate_of", "seed", "model")]
        for k in self.params:
            check(k in known, f"{key}.params.{k}", f"not a parameter of {self.name} (known: {', '.join(known)})")

    def build(self, **extra: Any):
        """The attack this section describes (:func:`sslguard.data.attacks.build_attack`); ``extra`` adds
        objects a config cannot hold (``model=`` for label-consistent)."""
        from sslguard.data.attacks import build_attack

        return build_attack(self.name, target=self.target, rate=self.rate, rate_of=self.rate_of, seed=self.seed,
                            **self.params, **extra)


@dataclass
class PoisonConfig:
    """``scripts/poison.py``: poison ``data`` with ``attack``, write the manifest (CSV + JSON) to
    ``output_dir`` and, when ``preview`` names a PNG, a grid of clean versus poisoned examples."""

    CONFIG_FOLDER: ClassVar[str] = "poison"  # shipped configs: sslguard/configs/poison/

    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    output_dir: str = "runs/poison"
    preview: Optional[str] = None
    preview_n: int = 8  # examples (columns) in the preview grid
    data_seed: int = 0  # split/subset seed of the dataset; kept apart from attack.seed so the images stay put

    def validate(self) -> None:
        self.data.validate("data")
        self.attack.validate("attack")  # also checks attack.name and attack.params.<key>
        check(self.preview_n > 0, "preview_n", "must be positive")
        check(bool(self.output_dir), "output_dir", "must not be empty")


@dataclass
class SSLConfig:
    """SSL pretraining (``scripts/train_ssl.py``; library: :func:`sslguard.train.ssl.train_ssl`)."""

    method: str = "simclr"  # simclr | byol
    backbone: str = "convnet4"  # convnet4 | cifar_resnet18 | resnet18 | resnet50 | timm:<name>
    width: Optional[int] = None  # channel width for convnet4 / cifar_resnet18 (None: the backbone's default)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra create_backbone arguments (timm)
    epochs: int = 100
    batch_size: int = 256  # global batch, summed over processes
    optimizer: str = "sgd"  # sgd | adamw | lars
    lr: Optional[float] = None  # absolute; None: 0.06 * batch_size / 256 for sgd (see train_ssl)
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    temperature: float = 0.5  # SimCLR NT-Xent
    proj_dim: Optional[int] = None  # None: 128 (SimCLR) / 256 (BYOL)
    hidden_dim: Optional[int] = None  # None: backbone feature size (SimCLR) / 4096 (BYOL)
    momentum_base: float = 0.99  # BYOL EMA momentum at step 0 (cosine to 1)
    min_scale: float = 0.08  # smallest crop area fraction of the augmentation
    augment: str = "default"  # default (the method's recipe, sslguard.train.augment) | lightly (SimCLRTransform's)
    schedule_epochs: Optional[int] = None  # length of the lr schedule (None: epochs); more stops it part way
    mixed_precision: str = "no"  # no | bf16 | fp16
    channels_last: bool = False
    compile: bool = False  # torch.compile the step (pays on a GPU at small image sizes; see train_ssl)
    preload: Any = "auto"  # true | false | auto: the corpus as one uint8 tensor on a GPU when it takes <= 4 GiB
    checkpoint_every: int = 1  # epochs; 0: only at the end
    knn_every: int = 0  # epochs; 0: no kNN monitor
    knn_k: int = 200
    knn_t: float = 0.1
    knn_train_per_class: Optional[int] = None  # labeled kNN bank size per class (None: the whole train split)
    seed: int = 0

    def validate(self, key: str = "ssl") -> None:
        check(self.method in ("simclr", "byol"), f"{key}.method", f"unknown method {self.method!r}; choose simclr or byol")
        from sslguard.models.backbones import BACKBONES

        check(self.backbone in BACKBONES or self.backbone.startswith("timm:"), f"{key}.backbone",
               f"unknown backbone {self.backbone!r}; choose from {', '.join(sorted(BACKBONES))} or timm:<name>")
        check(self.width is None or self.width > 0, f"{key}.width", "must be positive")
        check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        check(self.batch_size >= 2, f"{key}.batch_size", "must be >= 2 (contrastive losses need negatives)")
        check(self.optimizer in ("sgd", "adamw", "lars"), f"{key}.optimizer", "must be sgd, adamw or lars")
        check(self.lr is None or self.lr > 0, f"{key}.lr", "must be positive")
        check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        check(0 <= self.warmup_epochs <= self.epochs, f"{key}.warmup_epochs", "must be in [0, epochs]")
        check(self.temperature > 0, f"{key}.temperature", "must be positive")
        check(self.proj_dim is None or self.proj_dim > 0, f"{key}.proj_dim", "must be positive")
        check(self.hidden_dim is None or self.hidden_dim > 0, f"{key}.hidden_dim", "must be positive")
        check(0.0 <= self.momentum_base <= 1.0, f"{key}.momentum_base", "must be in [0, 1]")
        check(0.0 < self.min_scale <= 1.0, f"{key}.min_scale", "must be in (0, 1]")
        check(self.augment in ("default", "lightly"), f"{key}.augment", "choose default or lightly")
        check(self.schedule_epochs is None or self.schedule_epochs >= self.epochs, f"{key}.schedule_epochs",
              "must be >= epochs")
        check(self.mixed_precision in ("no", "bf16", "fp16"), f"{key}.mixed_precision", "must be no, bf16 or fp16")
        check(self.preload in (True, False, "auto"), f"{key}.preload", "must be true, false or auto")
        check(self.checkpoint_every >= 0, f"{key}.checkpoint_every", "must be >= 0")
        check(self.knn_every >= 0, f"{key}.knn_every", "must be >= 0")
        check(self.knn_k >= 1, f"{key}.knn_k", "must be >= 1")
        check(self.knn_t > 0, f"{key}.knn_t", "must be positive")
        check(self.knn_train_per_class is None or self.knn_train_per_class > 0, f"{key}.knn_train_per_class",
               "must be positive")

    def backbone_args(self) -> dict[str, Any]:
        """Keyword arguments for ``create_backbone``: ``backbone_kwargs`` plus ``width`` when set."""
        out = dict(self.backbone_kwargs)
        if self.width is not None:
            out["width"] = self.width
        return out

    def model_args(self) -> dict[str, Any]:
        """Keyword arguments for ``build_ssl_model`` (head sizes and the method's own knob)."""
        out: dict[str, Any] = {"proj_dim": self.proj_dim, "hidden_dim": self.hidden_dim}
        if self.method == "simclr":
            out["temperature"] = self.temperature
        else:
            out["momentum_base"] = self.momentum_base
        return out


@dataclass
class TrainSSLConfig:
    """``scripts/train_ssl.py``: pretrain an SSL encoder on ``data`` (poisoned by ``attack`` when set)."""

    CONFIG_FOLDER: ClassVar[str] = "train_ssl"  # shipped configs: sslguard/configs/train_ssl/

    data: DataConfig = field(default_factory=DataConfig)
    attack: Optional[AttackConfig] = None
    ssl: SSLConfig = field(default_factory=SSLConfig)
    output_dir: str = "runs/ssl"
    resume: bool = True
    progress: bool = True
    data_seed: int = 0  # split/subset seed of the dataset, kept apart from ssl.seed

    def validate(self) -> None:
        self.data.validate("data")
        if self.attack is not None:
            self.attack.validate("attack")
        self.ssl.validate("ssl")
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(self.ssl.knn_every == 0 or self.data.test_split is not None, "ssl.knn_every",
               "the kNN monitor needs data.test_split")
