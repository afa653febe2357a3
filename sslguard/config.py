"""Typed configuration: YAML in, dataclasses out; unknown keys and bad values are errors naming the key.

Only scripts read configs (``load_config``); library code takes typed keyword arguments. Overrides
use dotted keys on the command line: ``ssl.epochs=5 data.name=cifar10 attack=null``.

Each section is a dataclass with a ``validate()`` that raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key (``ssl.epochs: ...``)."""


# --------------------------------------------------------------------------------------- machinery


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:  # Optional[X]: X's own message names the inner key
            return _coerce(value, non_none[0], key)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            key = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None and not prefix:
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: an override is key=value (for example ssl.epochs=5)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{item}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:  # includes !!python/... tags, which safe_load refuses
            raise ConfigError(f"{key}: {raw!r} is not a valid YAML value ({_yaml_problem(exc)})") from None
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return (getattr(exc, "problem", None) or type(exc).__name__) + where


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)  # safe_load: a config cannot construct arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    except UnicodeDecodeError as exc:  # a binary file (an image, a checkpoint) passed as the config
        raise ConfigError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Read YAML (optional), apply dotted overrides, build and validate ``cls``."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# ----------------------------------------------------------------------------------------- sections


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
        _check(self.name in ("digits", "cifar10", "imagefolder"), f"{key}.name",
               f"unknown dataset {self.name!r}; choose from digits, cifar10, imagefolder")
        _check(self.name != "imagefolder" or self.root is not None, f"{key}.root", "an imagefolder dataset needs a root")
        _check(self.root is None or self.name == "digits" or Path(self.root).exists(), f"{key}.root",
               f"path does not exist: {self.root}")
        _check(self.subset_per_class is None or self.subset_per_class > 0, f"{key}.subset_per_class", "must be positive")
        _check(self.image_size > 0, f"{key}.image_size", "must be positive")
        _check(self.on_error in ("skip", "raise"), f"{key}.on_error", "must be skip or raise")
        _check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")


@dataclass
class AttackConfig:
    name: str = "htba"
    target: int = 0
    rate: float = 0.5
    rate_of: str = "target"  # target | dataset
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # attack-specific keyword arguments

    def validate(self, key: str = "attack") -> None:
        _check(0.0 <= self.rate <= 1.0, f"{key}.rate", f"must be in [0, 1], got {self.rate}")
        _check(self.rate_of in ("target", "dataset"), f"{key}.rate_of", "must be target or dataset")
        _check(self.target >= 0, f"{key}.target", "must be a class id >= 0")
        import inspect

        from sslguard.data.attacks import ATTACKS, list_attacks

        names = list_attacks()
        _check(self.name in names, f"{key}.name", f"unknown attack {self.name!r}; choose from {', '.join(names)}")
        sig = inspect.signature(ATTACKS[self.name].__init__)
        known = [p for p in sig.parameters if p not in ("self", "target", "rate", "rate_of", "seed", "model")]
        for k in self.params:
            _check(k in known, f"{key}.params.{k}", f"not a parameter of {self.name} (known: {', '.join(known)})")


@dataclass
class PoisonConfig:
    """``scripts/poison.py``: poison ``data`` with ``attack``, write the manifest (CSV + JSON) to
    ``output_dir`` and, when ``preview`` names a PNG, a grid of clean versus poisoned examples."""

    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    output_dir: str = "runs/poison"
    preview: Optional[str] = None
    preview_n: int = 8  # examples (columns) in the preview grid
    data_seed: int = 0  # split/subset seed of the dataset; kept apart from attack.seed so the images stay put

    def validate(self) -> None:
        self.data.validate("data")
        self.attack.validate("attack")  # also checks attack.name and attack.params.<key>
        _check(self.preview_n > 0, "preview_n", "must be positive")
        _check(bool(self.output_dir), "output_dir", "must not be empty")


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
    mixed_precision: str = "no"  # no | bf16 | fp16
    channels_last: bool = False
    checkpoint_every: int = 1  # epochs; 0: only at the end
    knn_every: int = 0  # epochs; 0: no kNN monitor
    knn_k: int = 200
    knn_t: float = 0.1
    knn_train_per_class: Optional[int] = None  # labeled kNN bank size per class (None: the whole train split)
    seed: int = 0

    def validate(self, key: str = "ssl") -> None:
        _check(self.method in ("simclr", "byol"), f"{key}.method", f"unknown method {self.method!r}; choose simclr or byol")
        from sslguard.models.backbones import BACKBONES

        _check(self.backbone in BACKBONES or self.backbone.startswith("timm:"), f"{key}.backbone",
               f"unknown backbone {self.backbone!r}; choose from {', '.join(sorted(BACKBONES))} or timm:<name>")
        _check(self.width is None or self.width > 0, f"{key}.width", "must be positive")
        _check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _check(self.batch_size >= 2, f"{key}.batch_size", "must be >= 2 (contrastive losses need negatives)")
        _check(self.optimizer in ("sgd", "adamw", "lars"), f"{key}.optimizer", "must be sgd, adamw or lars")
        _check(self.lr is None or self.lr > 0, f"{key}.lr", "must be positive")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_epochs <= self.epochs, f"{key}.warmup_epochs", "must be in [0, epochs]")
        _check(self.temperature > 0, f"{key}.temperature", "must be positive")
        _check(self.proj_dim is None or self.proj_dim > 0, f"{key}.proj_dim", "must be positive")
        _check(self.hidden_dim is None or self.hidden_dim > 0, f"{key}.hidden_dim", "must be positive")
        _check(0.0 <= self.momentum_base <= 1.0, f"{key}.momentum_base", "must be in [0, 1]")
        _check(0.0 < self.min_scale <= 1.0, f"{key}.min_scale", "must be in (0, 1]")
        _check(self.mixed_precision in ("no", "bf16", "fp16"), f"{key}.mixed_precision", "must be no, bf16 or fp16")
        _check(self.checkpoint_every >= 0, f"{key}.checkpoint_every", "must be >= 0")
        _check(self.knn_every >= 0, f"{key}.knn_every", "must be >= 0")
        _check(self.knn_k >= 1, f"{key}.knn_k", "must be >= 1")
        _check(self.knn_t > 0, f"{key}.knn_t", "must be positive")
        _check(self.knn_train_per_class is None or self.knn_train_per_class > 0, f"{key}.knn_train_per_class",
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
        _check(bool(self.output_dir), "output_dir", "must not be empty")
        _check(self.ssl.knn_every == 0 or self.data.test_split is not None, "ssl.knn_every",
               "the kNN monitor needs data.test_split")


@dataclass
class RepairConfig:
    """``scripts/benchmark.py repair`` (library: :func:`sslguard.bench.repair.run_repair_benchmark`): the
    trigger-persistence study of Truong et al. 2020 (attacks x training-time regularisers) and clean
    fine-tuning vs l-infinity pruning of the BadNets model, on a CIFAR-10 subset."""

    root: Optional[str] = None  # CIFAR-10 folder (None: $SSLGUARD_CIFAR10 or ../shared/data/cifar10)
    n_per_class: int = 500  # training subset per class
    n_test_per_class: int = 100  # test subset per class (clean accuracy, ASR)
    backbone: str = "convnet4"
    width: int = 16
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    rate: float = 0.1  # poisoned share of the training subset (all-to-one, labels flipped)
    target: int = 0
    seed: int = 0
    attacks: list[str] = field(default_factory=lambda: ["badnets", "blend", "sig"])
    regularizers: list[str] = field(
        default_factory=lambda: ["none", "mixup", "manifold_mixup", "logit_squeezing", "contrastive"])
    finetune_fraction: float = 0.05  # of the clean training subset, per class
    finetune_epochs: int = 5
    finetune_lrs: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05])  # one repair curve per rate
    finetune_batch_size: int = 32
    prune_fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    sections: list[str] = field(default_factory=lambda: ["study", "repair"])  # study | repair
    output_dir: str = "benchmarks/results/repair"

    def validate(self) -> None:
        from sslguard.bench.repair import STUDY_ATTACKS, STUDY_REGULARIZERS

        _check(self.n_per_class > 0, "n_per_class", "must be positive")
        _check(self.n_test_per_class > 0, "n_test_per_class", "must be positive")
        _check(self.width > 0, "width", "must be positive")
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.batch_size >= 2, "batch_size", "must be >= 2")
        _check(self.lr > 0, "lr", "must be positive")
        _check(0.0 < self.rate <= 1.0, "rate", f"must be in (0, 1], got {self.rate}")
        _check(self.target >= 0, "target", "must be a class id >= 0")
        for i, a in enumerate(self.attacks):
            _check(a in STUDY_ATTACKS, f"attacks[{i}]", f"unknown attack {a!r}; choose from {', '.join(STUDY_ATTACKS)}")
        for i, r in enumerate(self.regularizers):
            _check(r in STUDY_REGULARIZERS, f"regularizers[{i}]",
                   f"unknown regulariser {r!r}; choose from {', '.join(STUDY_REGULARIZERS)}")
        _check(0.0 < self.finetune_fraction <= 1.0, "finetune_fraction", "must be in (0, 1]")
        _check(self.finetune_epochs >= 1, "finetune_epochs", "must be >= 1")
        _check(len(self.finetune_lrs) > 0, "finetune_lrs", "give at least one learning rate")
        for i, v in enumerate(self.finetune_lrs):
            _check(v > 0, f"finetune_lrs[{i}]", f"must be positive, got {v}")
        _check(self.finetune_batch_size >= 2, "finetune_batch_size", "must be >= 2")
        for i, f in enumerate(self.prune_fractions):
            _check(0.0 <= f < 1.0, f"prune_fractions[{i}]", f"must be in [0, 1), got {f}")
        for i, sec in enumerate(self.sections):
            _check(sec in ("study", "repair"), f"sections[{i}]", f"unknown section {sec!r}; choose study or repair")
        _check(bool(self.output_dir), "output_dir", "must not be empty")


# ------------------------------------------------------------------------------------ detect (issue 6)


@dataclass
class EmbedConfig:
    batch_size: int = 256

    def validate(self, key: str = "embed") -> None:
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")


@dataclass
class DetectClusterConfig:
    """FAISS k-means of the embeddings (sslguard.cluster.kmeans), shared by the SSL-stage detectors."""

    # clusters; capped at the number of images. Twice a 10-class corpus' classes: k must exceed the natural groups
    # (classes, classes with two modes, one trigger group per attack), or k-means merges the trigger group
    # into its clean twin and whether it does flips with the CPU's float order (quickstart at k=10: isolated
    # on AVX-512 kernels, merged on SSE4.1; planted encoder: merged up to k=12, isolated from 13 on).
    k: int = 20
    niter: int = 25
    nredo: int = 1
    use_gpu: Optional[bool] = None  # None: GPU when faiss-gpu sees one

    def validate(self, key: str = "cluster") -> None:
        _check(self.k >= 1, f"{key}.k", "must be >= 1")
        _check(self.niter >= 1, f"{key}.niter", "must be >= 1")
        _check(self.nredo >= 1, f"{key}.nredo", "must be >= 1")


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

    def validate(self, key: str = "classifier") -> None:
        from sslguard.models.backbones import BACKBONES

        _check(self.mode in ("scratch", "linear", "finetune"), f"{key}.mode", "choose scratch, linear or finetune")
        _check(self.backbone in BACKBONES or self.backbone.startswith("timm:"), f"{key}.backbone",
               f"unknown backbone {self.backbone!r}; choose from {', '.join(sorted(BACKBONES))} or timm:<name>")
        _check(self.width is None or self.width > 0, f"{key}.width", "must be positive")
        _check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(self.lr > 0, f"{key}.lr", "must be positive")
        _check(self.optimizer in ("sgd", "adamw"), f"{key}.optimizer", "choose sgd or adamw")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")


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
        import inspect

        from sslguard.detectors import get_detector, list_detectors

        known = list_detectors()
        # what each stage hands its detectors (sslguard.pipeline); "benign" is the held-out test split
        provided = {"ssl": {"backbone", "dataset", "embeddings", "clusters"}, "classifier": {"model", "dataset", "benign"}}
        for group in ("ssl", "classifier"):
            for i, name in enumerate(getattr(self, group)):
                k = f"{key}.{group}[{i}]"
                _check(name in known, k, f"unknown detector {name!r}; choose from {', '.join(known)}")
                sig = inspect.signature(get_detector(name))
                _check("DetectionResult" in str(sig.return_annotation), k,
                       f"{name} does not score images (it returns {sig.return_annotation})")
                required = [p for p, v in sig.parameters.items() if v.default is v.empty
                            and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
                missing = [p for p in required if p not in provided[group] and p not in self.params.get(name, {})]
                other = "classifier" if group == "ssl" else "ssl"
                _check(not missing, k, f"{name} needs {', '.join(missing)}, which the {group} stage does not provide"
                       + (f" (list it under {key}.{other})" if not [p for p in required if p not in provided[other]]
                          else ""))
        supplied = {"backbone", "model", "dataset", "embeddings", "clusters", "accelerator", "progress", "device",
                    "activations"}
        for name, params in self.params.items():
            # parameters of a detector that is switched off are kept (and checked), so that turning a
            # detector off on the command line does not make the config file's own entries errors
            _check(name in known, f"{key}.params.{name}", f"unknown detector {name!r}; choose from {', '.join(known)}")
            _check(isinstance(params, dict), f"{key}.params.{name}", "must be a mapping of keyword arguments")
            accepted = [p for p in inspect.signature(get_detector(name)).parameters if p not in supplied]
            for p in params:
                _check(p in accepted, f"{key}.params.{name}.{p}",
                       f"not a parameter of {name} (known: {', '.join(accepted)})")
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")


@dataclass
class FusionConfig:
    """How detector scores are combined and which images are flagged (see sslguard.pipeline)."""

    method: str = "rank_mean"  # rank_mean | max_norm
    flag: str = "any"  # any | majority | all | fused
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
        _check(self.method in ("rank_mean", "max_norm"), f"{key}.method", "choose rank_mean or max_norm")
        _check(self.flag in ("any", "majority", "all", "fused"), f"{key}.flag", "choose any, majority, all or fused")
        for name in ("max_share", "max_class_share"):
            v = getattr(self, name)
            _check(v is None or 0.0 < v <= 1.0, f"{key}.{name}", "must be in (0, 1] or null")
        _check(0.0 < self.fused_quantile < 1.0, f"{key}.fused_quantile", "must be in (0, 1)")


@dataclass
class ReportConfig:
    top_k: int = 24  # flagged images shown with their Grad-CAM overlay
    max_rows: int = 200  # rows of the flagged-image table in report.html
    embedding: str = "pca"  # pca | tsne (slow on many points)

    def validate(self, key: str = "report") -> None:
        _check(self.top_k >= 0, f"{key}.top_k", "must be >= 0")
        _check(self.max_rows >= 0, f"{key}.max_rows", "must be >= 0")
        _check(self.embedding in ("pca", "tsne"), f"{key}.embedding", "choose pca or tsne")


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
        _check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
               f"must be a plain folder name, got {self.name!r}")
        _check(bool(self.output_dir), "output_dir", "must not be empty")
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        self.data.validate("data")
        if self.data.root is not None and self.data.name == "imagefolder":
            out = Path(self.output_dir).resolve()
            root = Path(self.data.root).resolve()
            _check(out != root and root not in out.parents, "output_dir",
                   f"must not be inside the source folder {root} (the source is never written)")
        if self.attack is not None:
            self.attack.validate("attack")
        if self.extra_attack is not None:
            _check(self.attack is not None, "extra_attack", "needs an attack (set attack first)")
            self.extra_attack.validate("extra_attack")
        _check(self.encoder is None or Path(self.encoder).is_file(), "encoder", f"file not found: {self.encoder}")
        for section in ("ssl", "embed", "cluster", "detectors", "classifier", "fusion", "retrain", "report"):
            v = getattr(getattr(self, section), "validate", None)
            if v is not None:
                v(section)
        _check(len(self.detectors.ssl) + len(self.detectors.classifier) > 0, "detectors",
               "no detector selected (detectors.ssl and detectors.classifier are both empty)")
        for i, name in enumerate(self.fusion.detectors or []):
            _check(name in self.detectors.ssl or name in self.detectors.classifier, f"fusion.detectors[{i}]",
                   f"{name!r} is not one of the detectors that run")


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines (what ``--help`` shows beside each key)."""
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every dotted key of config dataclass ``cls`` with its default (YAML) and comment, for ``--help``.

    An optional section whose default is ``null`` (``attack``) lists its keys with the section's own
    defaults, since setting any of them switches the section on."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    obj = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (Union, types.UnionType) else [tp]
        value = getattr(obj, f.name)
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            if value is None:
                rows.append((key, "null", comments.get(f.name, "")))
            rows += describe_keys(inner[0], f"{key}.")
            continue
        default = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10_000).strip()
        if default.endswith("\n..."):  # PyYAML's end-of-document marker after a bare scalar
            default = default[:-4]
        rows.append((key, default, comments.get(f.name, "")))
    return rows
