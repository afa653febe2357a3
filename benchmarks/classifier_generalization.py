"""Classifier-stage checks over a matrix of datasets, attacks, triggers, poison shares, models and trusted sets.

Prints and writes ``benchmarks/classifier_generalization.md`` (+ ``.json``, one row per case):

    python benchmarks/classifier_generalization.py [--cases NAME ...] [--work DIR] [--out F.json]
    python benchmarks/classifier_generalization.py --rows-from A.json B.json      # the table from saved rows
    python benchmarks/classifier_generalization.py --list

Per case: a corpus is poisoned (all-to-one to class 0, labels flipped, except label-consistent), a
classifier is trained on it from scratch, its clean accuracy and attack success rate (ASR) are measured
on held-out images, and the four registered classifier-stage detectors run with the arguments the
pipeline passes (trusted images as ``reference`` / ``benign``), once per trusted set:

- ``iid``: held-out images of the corpus' own distribution;
- shifted: ``writers`` (MNIST: the test file's last 2,000 images, other writers than the corpus),
  ``jpeg`` (the trusted images recompressed at JPEG quality 30), ``colour`` (a warm colour cast: red x 1.1
  + 10, blue x 0.85 - 5).

Fusion rules, all from :func:`sslguard.pipeline.fusion.fuse` with the pipeline's plausibility vote
(detectors whose flags :mod:`sslguard.plausibility` calls implausible do not vote): ``any`` (the union),
``agree`` (the pipeline's default: images at least two of the detectors that flagged anything flag, plus
activation / heatmap clustering's flags in classes at least two detectors flag; the one's flags when only
one flagged anything), ``two`` (the two votes without the class vote), ``every`` (images every detector
that flagged anything flags: ``agree`` before this benchmark). A runaway flag set is one over 2 x the
poisons + 1% of the corpus; the matrix counts those the pipeline's warnings (implausible or
uncorroborated flags, :mod:`sslguard.plausibility`) did not name.

The corpus' features (penultimate activations, every stage's output, LRP heatmaps) are computed once
per case and shared by every trusted set and rule; models are kept in ``--work`` (rerun = reload).
Sizes are set for 2 CPU cores: a convnet4 CIFAR-10 case takes about 1-2 minutes, the cifar_resnet18 one
about 30 (training 15, features and LRP 13). Rows keep per-image flags and critical-layer scores, so
``--rows-from`` recomputes the fusion rules and the table without training anything.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TRIGGERS = ROOT / "benchmarks" / "triggers"
DETECTORS = ("activation_clustering", "heatmap_clustering", "spectral", "critical_layer")
SHORT = {"activation_clustering": "AC", "heatmap_clustering": "HC", "spectral": "SP", "critical_layer": "CL"}
RULES = ("any", "agree", "two", "every")
TARGET = 0
# DBALFA (Jebreel et al., PAKDD 2023), its notebook's CIFAR-10 / ResNet-18 / BadNets result at tau 2.5.
DBALFA = {"tpr": 0.9946, "fpr": 0.0122}


@dataclass(frozen=True)
class Case:
    """One cell of the matrix. ``rate``: share of the corpus poisoned (label-consistent: of the target class)."""

    name: str
    data: str
    attack: str
    rate: float
    trigger: str
    params: dict = field(default_factory=dict, hash=False)
    model: str = "convnet4"
    prune: bool = False  # run l-infinity pruning on this model
    width: int | None = None  # the model's width, when not TRAIN's
    art: bool = False  # ART's ActivationDefence side by side


def _t(name: str) -> str:
    return str(TRIGGERS / name)


CASES = [
    Case("digits_badnets_grid_10", "digits", "badnets", 0.10, "grid", {"size_fraction": 0.15}),
    Case("digits_blend_texture_5", "digits", "blend_supervised", 0.05, "texture.png",
         {"trigger_path": _t("texture.png"), "alpha": 0.2}),
    Case("digits_sig_10", "digits", "sig", 0.10, "sine"),
    Case("mnist_badnets_grid4_10", "mnist", "badnets", 0.10, "grid 4 px", {"trigger_size": 4}, prune=True, art=True),
    Case("mnist_badnets_glyph_1", "mnist", "badnets", 0.01, "glyph.png",
         {"trigger_path": _t("glyph.png"), "trigger_size": 6}),
    Case("mnist_blend_5", "mnist", "blend_supervised", 0.05, "noise", {"alpha": 0.2}),
    Case("mnist_wanet_10", "mnist", "wanet", 0.10, "warp"),
    Case("mnist_badnets_grid4_10_w64", "mnist", "badnets", 0.10, "grid 4 px", {"trigger_size": 4}, prune=True,
         width=64),
    Case("mnist_lc_5", "mnist", "label_consistent", 0.5, "corner stickers", {"epsilon": 32.0, "amplitude": 128.0}),
    Case("cifar_badnets_grid_10", "cifar10", "badnets", 0.10, "grid", {"size_fraction": 0.15}, prune=True, art=True),
    Case("cifar_badnets_logo_5", "cifar10", "badnets", 0.05, "logo.png",
         {"trigger_path": _t("logo.png"), "size_fraction": 0.2}),
    Case("cifar_badnets_grid_1", "cifar10", "badnets", 0.01, "grid", {"size_fraction": 0.15}),
    Case("cifar_blend_10", "cifar10", "blend_supervised", 0.10, "noise", {"alpha": 0.2}),
    Case("cifar_blend_texture_5", "cifar10", "blend_supervised", 0.05, "texture.png",
         {"trigger_path": _t("texture.png"), "alpha": 0.2}),
    Case("cifar_sig_5", "cifar10", "sig", 0.05, "sine"),
    Case("cifar_wanet_10", "cifar10", "wanet", 0.10, "warp"),
    Case("cifar_lc_5", "cifar10", "label_consistent", 0.5, "corner stickers", {"epsilon": 8.0, "amplitude": 64.0}),
    Case("imagenette_badnets_logo_10", "imagenette64", "badnets", 0.10, "logo.png",
         {"trigger_path": _t("logo.png"), "size_fraction": 0.15}),
    Case("imagenette_blend_5", "imagenette64", "blend_supervised", 0.05, "noise", {"alpha": 0.2}),
    Case("imagenette_sig_10", "imagenette64", "sig", 0.10, "sine"),
    Case("cifar_r18_badnets_grid_10", "cifar10", "badnets", 0.10, "grid", {"size_fraction": 0.15},
         model="cifar_resnet18", prune=True),
]
TRAIN = {  # per dataset and model: (width, epochs, batch size, lr)
    ("digits", "convnet4"): (16, 15, 64, 0.05),
    ("mnist", "convnet4"): (16, 4, 64, 0.05),
    ("cifar10", "convnet4"): (16, 15, 128, 0.05),
    ("imagenette64", "convnet4"): (16, 20, 64, 0.05),
    ("cifar10", "cifar_resnet18"): (64, 8, 128, 0.05),
}


# ------------------------------------------------------------------------------------------ data


@dataclass
class Data:
    corpus: object
    eval: object  # clean accuracy and ASR
    trusted: dict  # name -> dataset


def _array(x, y, keys, classes):
    from sslguard.data.datasets import ArrayDataset

    return ArrayDataset(np.ascontiguousarray(x), np.asarray(y, dtype=np.int64), classes, keys=np.asarray(keys))


def jpeg(ds, quality: int = 30):
    """``ds`` with every image recompressed at JPEG ``quality``."""
    from PIL import Image

    out = []
    for im in ds.images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return _array(np.stack(out), ds.labels, ds.keys, ds.classes)


def colour(ds):
    """``ds`` with a warm colour cast (red x 1.1 + 10, blue x 0.85 - 5)."""
    x = ds.images.astype(np.float32) * np.array([1.1, 1.0, 0.85]) + np.array([10.0, 0.0, -5.0])
    return _array(np.clip(np.round(x), 0, 255).astype(np.uint8), ds.labels, ds.keys, ds.classes)


def _per_class(labels, n_per_class: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint per-class draws of the given sizes (the rest is the last part), positions sorted."""
    rng = np.random.default_rng([seed, 19])
    parts = [[] for _ in range(len(n_per_class) + 1)]
    for c in np.unique(labels):
        pos = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for i, n in enumerate(n_per_class):
            parts[i].append(pos[start:start + n])
            start += n
        parts[-1].append(pos[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def load_data(name: str, seed: int) -> Data:
    """The corpus, the held-out evaluation images and the trusted sets of dataset ``name`` (module doc)."""
    if name == "digits":
        from sslguard.data.datasets import load_digits_dataset

        train, test = load_digits_dataset("train", seed=seed), load_digits_dataset("test", seed=seed)
        ev, tr = _per_class(test.labels, [18], seed)
        trusted = _array(test.images[tr], test.labels[tr], np.asarray(test.keys)[tr], test.classes)
        evs = _array(test.images[ev], test.labels[ev], np.asarray(test.keys)[ev], test.classes)
        return Data(train, evs, {"iid": trusted, "jpeg": jpeg(trusted)})
    if name == "mnist":
        import gzip

        d = SHARED / "mnist-test"
        with gzip.open(d / "t10k-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(d / "t10k-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        x = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=3)
        classes = [str(i) for i in range(10)]
        first = np.arange(8000)
        iid, ev = first[first % 10 == 0], first[first % 10 == 5]
        corpus = np.setdiff1d(first, np.concatenate([iid, ev]))
        writers = np.sort(np.random.default_rng([seed, 23]).choice(np.arange(8000, 10000), len(iid), replace=False))
        mk = lambda p: _array(x[p], y[p], p, classes)  # noqa: E731
        return Data(mk(corpus), mk(ev), {"iid": mk(iid), "writers": mk(writers)})
    if name == "cifar10":
        from sslguard.data.datasets import load_cifar10

        train, test = load_cifar10(SHARED / "cifar10", "train"), load_cifar10(SHARED / "cifar10", "test")
        cp = _per_class(train.labels, [500], seed)[0]
        ev, tr, _ = _per_class(test.labels, [100, 50], seed)
        mk = lambda ds, p: _array(ds.images[p], ds.labels[p], np.asarray(ds.keys)[p], ds.classes)  # noqa: E731
        trusted = mk(test, tr)
        return Data(mk(train, cp), mk(test, ev), {"iid": trusted, "jpeg": jpeg(trusted), "colour": colour(trusted)})
    if name == "imagenette64":
        x, y, classes = _imagenette64()
        tr, ev, cp = _per_class(y, [40, 60], seed)
        mk = lambda p: _array(x[p], y[p], p, classes)  # noqa: E731
        trusted = mk(tr)
        return Data(mk(cp), mk(ev), {"iid": trusted, "jpeg": jpeg(trusted), "colour": colour(trusted)})
    raise ValueError(f"unknown dataset {name!r}")


def _imagenette64():
    """Imagenette's 3,925 validation photos at 64 px (Lanczos), class folders sorted; cached under /tmp."""
    from PIL import Image

    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "sslguard_imagenette64.npz"
    if cache.exists():
        z = np.load(cache)
        return z["x"], z["y"], [str(c) for c in z["classes"]]
    root = SHARED / "imagenette2-224"
    root = root / "val" if (root / "val").is_dir() else root
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.LANCZOS)))
            ys.append(i)
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    np.savez(cache, x=x, y=y, classes=np.asarray(classes))
    return x, y, classes


# ------------------------------------------------------------------------------------------ one case


def _train(case: Case, corpus, work: Path | None, tag: str, seed: int):
    from sslguard.models.classifier import build_classifier
    from sslguard.train.classifier import train_classifier

    width, epochs, bs, lr = TRAIN[(case.data, case.model)]
    width = case.width or width
    model = build_classifier(case.model, corpus.num_classes, width=width, seed=seed)
    path = work / f"{tag}.pt" if work is not None else None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    t = time.perf_counter()
    train_classifier(model, corpus, epochs=epochs, batch_size=bs, lr=lr, seed=seed, progress=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), time.perf_counter() - t


def build_case(case: Case, data: Data, work: Path | None, seed: int):
    """``(poisoned corpus, attack, model, model metrics)``."""
    from sslguard.data import poison_dataset
    from sslguard.data.attacks import build_attack
    from sslguard.train.classifier import evaluate_classifier

    kw = dict(target=TARGET, rate=case.rate, seed=seed, **case.params)
    info = {}
    if case.attack == "label_consistent":  # PGD images come from a clean model of the same recipe
        clean, s = _train(case, data.corpus, work, f"clean_{case.data}_{case.model}_s{seed}", seed)
        info["pgd_model_seconds"] = s
        attack = build_attack("label_consistent", rate_of="target", model=clean, **kw)
    else:
        attack = build_attack(case.attack, rate_of="dataset", **kw)
    corpus, _ = poison_dataset(data.corpus, attack)
    model, s = _train(case, corpus, work, f"{case.name}_s{seed}", seed)
    info.update(evaluate_classifier(model, data.eval, attack), train_seconds=s)
    return corpus, attack, model, info


def fused(row: dict, trust: str) -> tuple[dict, list[str], dict]:
    """Every fusion rule's flags on one trusted set, from the saved per-detector flags, with the pipeline's
    plausibility vote: ``{rule: boolean flags}`` and the detectors that did not vote."""
    from sslguard.config.detect import FusionConfig
    from sslguard.detectors.base import DetectionResult
    from sslguard.pipeline.fusion import fuse, implausible_detectors, stage_roles

    n, labels = row["n"], np.asarray(row["labels"])
    res = {}
    for name, pos in row["trust"][trust]["flags"].items():
        f = np.zeros(n, dtype=bool)
        f[pos] = True
        res[name] = DetectionResult(name, np.arange(n), np.zeros(n), f, 0.0)
    fc = FusionConfig()
    no_vote = [m for m, _, votes in implausible_detectors(res, labels, list(res), fc.max_share, fc.max_class_share)
               if votes]
    rs = list(res.values())
    roles = stage_roles(list(res))
    out = {"any": fuse(rs, flag="any", no_vote=no_vote).flagged,
           # the pipeline's default: every classifier-stage detector is one group (sslguard.detectors registry)
           "agree": fuse(rs, flag="agree", no_vote=no_vote, labels=labels, **roles).flagged}
    voters = [r.flagged for r in rs if r.name not in no_vote and r.flagged.any()]
    out["two"] = fuse(rs, flag="agree", no_vote=no_vote, groups=roles["groups"]).flagged
    out["every"] = np.logical_and.reduce(voters) if voters else np.zeros(n, dtype=bool)  # "agree" before
    return out, no_vote, res


def warnings_of(res: dict, labels, no_vote) -> dict[str, str]:
    """The pipeline's warnings per detector: implausible flags, or flags no other detector shares."""
    from sslguard.pipeline.fusion import stage_roles
    from sslguard.plausibility import implausible_flags, uncorroborated_flags

    out = {n: w for n, r in res.items() if (w := implausible_flags(r.flagged, labels))}
    groups = stage_roles([n for n in res if n not in no_vote])["groups"]
    for n, w in uncorroborated_flags({n: res[n].flagged for n in groups}, groups).items():
        out.setdefault(n, w)
    return out


def fused_metrics(row: dict, trust: str) -> tuple[dict, list[str]]:
    truth = np.zeros(row["n"], dtype=bool)
    truth[row["truth"]] = True
    labels = np.asarray(row["labels"])
    flags, no_vote, res = fused(row, trust)
    return {r: _metrics(_Flags(f), labels, truth) for r, f in flags.items()}, no_vote, warnings_of(res, labels, no_vote)


def with_fusion(row: dict) -> dict:
    """``row`` with each trusted set's fused metrics (recomputed from the saved flags: a rule can change
    without retraining anything)."""
    for trust, t in row["trust"].items():
        t["fused"], t["not_voting"], t["warnings"] = fused_metrics(row, trust)
    return row


class _Flags:
    """A flag set scored by itself (fused AUROC is that of the flags)."""

    def __init__(self, flagged):
        self.flagged, self.scores = flagged, flagged.astype(float)


def _metrics(r, labels, truth) -> dict:
    from sslguard.metrics import detection_metrics

    m = detection_metrics(r.scores, r.flagged, truth)
    cls = sorted(int(c) for c in np.unique(labels[r.flagged]))
    return {"flagged": int(r.flagged.sum()), "classes": cls, **{k: float(m[k]) for k in
                                                                 ("precision", "recall", "f1", "auroc")},
            "fpr": float((r.flagged & ~truth).sum() / max(1, (~truth).sum()))}


def run_case(case: Case, data: Data, work: Path | None, seed: int) -> dict:
    from benchmarks.classifier_shift import features, run_detectors
    t0 = time.perf_counter()
    corpus, attack, model, info = build_case(case, data, work, seed)
    labels, truth = np.asarray(corpus.labels), np.asarray(corpus.poisoned_mask, dtype=bool)
    n, p = len(labels), int(truth.sum())
    row = {"labels": labels.tolist(), "truth": np.flatnonzero(truth).tolist(), "case": case.name, "data": case.data,
           "attack": case.attack, "rate": case.rate, "trigger": case.trigger,
           "model": case.model + (f" w{case.width}" if case.width else ""), "n": n, "poisons": p, "share": p / n,
           **info, "trust": {}}
    t = time.perf_counter()
    fc = features(model, corpus)
    row["feature_seconds"] = time.perf_counter() - t
    for trust, ref in data.trusted.items():
        t = time.perf_counter()
        res = run_detectors(_View(model, corpus), fc, features(model, ref), ref, ["new"])["new"]
        out = {"detectors": {}, "seconds": 0.0}
        for name, r in res.items():
            m = _metrics(r, labels, truth)
            m["runaway"] = m["flagged"] > 2 * p + 0.01 * n
            out["detectors"][name] = m
        out["flags"] = {name: np.flatnonzero(r.flagged).tolist() for name, r in res.items()}
        cl = res["critical_layer"]  # scores and examined classes: another per-image cut needs no rerun
        out["cl"] = {"scores": np.round(cl.scores, 4).tolist(), "examined": cl.info["examined_classes"],
                     "cut": cl.info.get("cut")}
        out["seconds"] = time.perf_counter() - t
        row["trust"][trust] = out
    if case.prune:
        row["prune"] = prune(model, corpus, data, attack)
    if case.art:
        row["art"] = art_row(model, corpus, fc["penultimate"], truth)
    row["seconds"] = time.perf_counter() - t0
    return row


class _View:
    """What ``classifier_shift.run_detectors`` reads from its case: the model and the corpus."""

    def __init__(self, model, train):
        self.model, self.train = model, train


def prune(model, corpus, data: Data, attack) -> dict:
    """l-infinity pruning with the rule that needs no trigger (the largest fraction within 3 points of clean
    accuracy), channels ranked on the iid trusted images against the corpus; and fine-pruning
    (:mod:`sslguard.repair.fine_pruning`: the same ranking, each fraction fine-tuned on the iid trusted
    images, the largest whose fine-tuned accuracy stays within 3 points)."""
    from sslguard.repair.linf_pruning import linf_pruning

    from sslguard.repair.fine_pruning import fine_pruning

    keys = ("clean_acc_before", "clean_acc_after", "asr_before", "asr_after", "seconds")
    out = {}
    for name, fn in (("linf", linf_pruning), ("fine", fine_pruning)):
        r = fn(model, data.trusted["iid"], val=data.eval, suspect=corpus, attack=attack)
        out[name] = {"fraction": r.chosen_fraction, "order": r.info.get("order"),
                     **{k: float(r.info[k]) for k in keys}}
        if name == "fine":
            out[name]["curve"] = [[float(v) for v in t] for t in zip(r.fractions, r.clean_acc_pruned, r.asr_pruned,
                                                                      r.clean_acc, r.asr)]
    return out


def art_row(model, corpus, penultimate, truth) -> dict:
    """ART ActivationDefence (FastICA-10, k=2, smaller cluster) on our penultimate activations."""
    try:
        from benchmarks.classifier import run_art
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        out = run_art(model, corpus, expected_rate=0.1, cluster_analysis="smaller", features=penultimate,
                      spectral=False)["art_activation"]
    except ModuleNotFoundError as exc:
        return {"error": f"ART not installed ({exc})"}
    if "error" in out:
        return out
    from sslguard.metrics import detection_metrics

    f = np.asarray(out["flagged"], bool)
    m = detection_metrics(f.astype(float), f, truth)
    return {"flagged": int(f.sum()), "seconds": out["seconds"],
            **{k: float(m[k]) for k in ("precision", "recall", "f1")}}


# ------------------------------------------------------------------------------------------ the file

LEARNED_ASR = 0.9
BAR = {"precision": 0.8, "recall": 0.9}


def meets(m: dict) -> bool:
    return m["precision"] >= BAR["precision"] and m["recall"] >= BAR["recall"]


def _f(v, d: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"


def case_table(rows: list[dict]) -> str:
    head = ["case", "data", "model", "attack", "trigger", "poisons (share)", "clean acc", "ASR", "learned", "trusted",
            *[f"{SHORT[d]} flagged / P / R / AUROC" for d in DETECTORS], *[f"fused {r} P / R" for r in RULES],
            "not voting", "warnings"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        learned = row["asr"] >= LEARNED_ASR
        for trust, t in row["trust"].items():
            cells = [row["case"], row["data"], row["model"], row["attack"], row["trigger"],
                     f"{row['poisons']} ({row['share']:.1%})", _f(row["clean_acc"], 3), _f(row["asr"], 3),
                     "yes" if learned else "no", trust]
            for d in DETECTORS:
                m = t["detectors"].get(d)
                cells.append("-" if m is None else f"{m['flagged']} / {_f(m['precision'])} / {_f(m['recall'])} / "
                             f"{_f(m['auroc'], 3)}")
            for r in RULES:
                m = t["fused"][r]
                cells.append(f"{'**' if learned and meets(m) else ''}{_f(m['precision'])} / {_f(m['recall'])}"
                             f"{'**' if learned and meets(m) else ''}")
            cells.append(", ".join(SHORT[n] for n in t["not_voting"]) or "-")
            cells.append(", ".join(SHORT[d] for d in t["warnings"]) or "-")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(rows: list[dict]) -> tuple[str, dict]:
    """Per fusion rule and trusted-set kind (iid / shifted): learned cases meeting P >= 0.8, R >= 0.9; and the
    runaway flag sets (over 2 x poisons + 1% of the corpus) with and without a warning."""
    tally: dict = {}
    runaway = {"warned": 0, "silent": []}
    for row in rows:
        for trust, t in row["trust"].items():
            kind = "iid" if trust == "iid" else "shifted"
            for d, m in t["detectors"].items():
                if m["runaway"]:
                    if d in t["warnings"]:
                        runaway["warned"] += 1
                    else:
                        runaway["silent"].append(f"{row['case']} [{trust}] {SHORT[d]} ({m['flagged']} flags)")
            if row["asr"] < LEARNED_ASR:
                continue
            for r in RULES:
                c = tally.setdefault((r, kind), [0, 0])
                c[0] += 1
                c[1] += meets(t["fused"][r])
    lines = ["| fusion rule | trusted | learned cases | P >= 0.8 and R >= 0.9 | share |", "|---|---|---|---|---|"]
    for (r, kind), (n, ok) in sorted(tally.items()):
        lines.append(f"| {r} | {kind} | {n} | {ok} | {ok / max(1, n):.0%} |")
    lines.append("")
    lines.append(f"Runaway flag sets (a detector flagging over 2 x the poisons + 1% of the corpus): "
                 f"{runaway['warned']} with a warning, {len(runaway['silent'])} without"
                 + (": " + "; ".join(runaway["silent"]) if runaway["silent"] else "") + ".")
    return "\n".join(lines) + "\n", {"tally": {f"{r} {k}": v for (r, k), v in tally.items()}, "runaway": runaway}


def extras(rows: list[dict]) -> str:
    out = []
    pr = [r for r in rows if "prune" in r and "linf" in r["prune"]]
    if pr:
        out.append("### l-infinity pruning and fine-pruning (stopping rules that need no trigger)\n\n"
                   "Channels of the last stage ranked on the corpus against the iid trusted images (`order` "
                   "`suspect`). `linf`: the largest pruned fraction whose clean accuracy (held-out images) stays "
                   "within 3 points (`sslguard.repair.linf_pruning`). `fine`: each fraction 0.1-0.9 fine-tuned for "
                   "5 epochs on the iid trusted images, the largest whose fine-tuned clean accuracy stays within 3 "
                   "points (`sslguard.repair.fine_pruning`). ASR is read afterwards. Goal: ASR down >= 80% "
                   "(relative), clean accuracy within 3 points.\n\n| case | model | repair | fraction pruned | "
                   "clean acc before -> after | ASR before -> after | ASR drop | goal | seconds |\n"
                   "|---|---|---|---|---|---|---|---|---|")
        for r in pr:
            for kind in ("linf", "fine"):
                p = r["prune"][kind]
                drop = 1 - p["asr_after"] / max(p["asr_before"], 1e-9)
                ok = drop >= 0.8 and p["clean_acc_before"] - p["clean_acc_after"] <= 0.03 + 1e-9
                out.append(f"| {r['case']} | {r['model']} | {kind} | {p['fraction']:.3f} | "
                           f"{p['clean_acc_before']:.3f} -> {p['clean_acc_after']:.3f} | {p['asr_before']:.3f} -> "
                           f"{p['asr_after']:.3f} | {drop:.0%} | {'met' if ok else 'not met'} | {p['seconds']:.0f} |")
        out.append("\nFine-pruning curves (fraction: clean acc / ASR after pruning -> after fine-tuning):\n")
        for r in pr:
            out.append(f"- {r['case']}: " + "; ".join(f"{f:.1f}: {a:.3f} / {s:.3f} -> {a2:.3f} / {s2:.3f}"
                                                      for f, a, s, a2, s2 in r["prune"]["fine"]["curve"]))
        out.append("")
    cl = [r for r in rows if r["model"] == "cifar_resnet18" and r["attack"] == "badnets"]
    if cl:
        out.append("### Critical layer next to DBALFA (Jebreel et al., PAKDD 2023)\n\n"
                   "The paper's notebook: CIFAR-10 (50,000 training images), ResNet-18, BadNets, tau 2.5: TPR "
                   f"{DBALFA['tpr']:.2%}, FPR {DBALFA['fpr']:.2%}. Here: TPR = recall, FPR = clean images flagged / "
                   "clean images.\n\n| case | trusted | TPR | FPR | flagged | AUROC |\n|---|---|---|---|---|---|")
        out.append(f"| DBALFA (paper) | - | {DBALFA['tpr']:.2%} | {DBALFA['fpr']:.2%} | - | - |")
        for r in cl:
            for trust, t in r["trust"].items():
                m = t["detectors"]["critical_layer"]
                out.append(f"| {r['case']} | {trust} | {m['recall']:.2%} | {m['fpr']:.2%} | {m['flagged']} | "
                           f"{m['auroc']:.3f} |")
        out.append("")
    art = [r for r in rows if "art" in r]
    if art:
        out.append("### ART side by side\n\nART's `ActivationDefence` (FastICA-10, k=2, `smaller`) on the same "
                   "penultimate activations, no trusted set; ours with the iid trusted set.\n\n"
                   "| case | ART flagged / P / R / F1 | ours (AC, iid) flagged / P / R / F1 | ART s |\n|---|---|---|---|---|")
        for r in art:
            a, m = r["art"], r["trust"]["iid"]["detectors"]["activation_clustering"]
            left = a.get("error") or f"{a['flagged']} / {a['precision']:.2f} / {a['recall']:.2f} / {a['f1']:.2f}"
            out.append(f"| {r['case']} | {left} | {m['flagged']} / {m['precision']:.2f} / {m['recall']:.2f} / "
                       f"{m['f1']:.2f} | {_f(a.get('seconds'), 1)} |")
        out.append("")
    return "\n".join(out)


def write(rows: list[dict], out_md: Path, command: str) -> None:
    order = {c.name: i for i, c in enumerate(CASES)}
    rows = sorted(rows, key=lambda r: order.get(r["case"], 999))
    text, tally = summary(rows)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    parts = [f"# Classifier-stage checks across a matrix of cases\n\nWritten by `{command}`; oneDNN ISA limit: "
             f"{isa}; torch {torch.__version__}; 1 thread. What each column means and how the cases are built: the "
             f"script's docstring. Target class 0 in every case; a case counts as learned at ASR >= {LEARNED_ASR}. "
             "Fused P / R in bold: the acceptance bar (P >= 0.8, R >= 0.9) met on a learned case.\n",
             "## Summary\n\n" + text, "## Cases\n\n" + case_table(rows) + "\n", extras(rows)]
    notes = out_md.with_name("classifier_generalization_notes.md")
    if notes.exists():
        parts.append(f"Reading: `{notes.name}`.\n")
    out_md.write_text("\n".join(parts))
    lean = [{k: v for k, v in r.items() if k not in ("labels", "truth")} for r in rows]
    for r in lean:  # the per-image flags stay in the run's --out file; the committed file keeps the numbers
        r["trust"] = {k: {a: b for a, b in t.items() if a not in ("flags", "cl")} for k, t in r["trust"].items()}
    out_md.with_suffix(".json").write_text(json.dumps({"rows": lean, "summary": tally}, indent=1, default=str))
    print(f"wrote {out_md}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=None, help="case names (default: all); with --rows-from: none")
    ap.add_argument("--work", default=None, help="folder for trained models (reused on a rerun)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="rows JSON of this run (default: none)")
    ap.add_argument("--rows-from", nargs="*", default=None, help="rows JSON files (later ones win per case)")
    ap.add_argument("--md", default=str(Path(__file__).with_name("classifier_generalization.md")))
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for c in CASES:
            print(c.name, c.data, c.attack, c.rate, c.trigger, c.model)
        return 0
    torch.set_num_threads(1)
    rows: dict[str, dict] = {}
    for f in args.rows_from or []:
        for r in json.loads(Path(f).read_text())["rows"]:
            rows[r["case"]] = with_fusion(r)
    if args.cases is None:  # every case, unless the rows come from files
        names = [] if args.rows_from is not None else [c.name for c in CASES]
    else:
        names = args.cases
    unknown = set(names) - {c.name for c in CASES}
    if unknown:
        print(f"unknown cases: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else None
    cache: dict[str, Data] = {}
    for c in [c for c in CASES if c.name in names]:
        if c.data not in cache:
            cache.clear()  # one dataset in memory at a time (cases are ordered by dataset)
            try:
                cache[c.data] = load_data(c.data, args.seed)
            except (FileNotFoundError, OSError) as exc:  # ../shared/data missing: one line, exit code 1
                print(f"{c.name}: data not found ({exc})", file=sys.stderr)
                return 1
        row = with_fusion(run_case(c, cache[c.data], work, args.seed))
        rows[c.name] = row
        print(json.dumps({k: row[k] for k in ("case", "clean_acc", "asr", "seconds")}), flush=True)
        for trust, t in row["trust"].items():
            print(f"  {trust}: " + "; ".join(f"{SHORT[d]} {m['flagged']} P {m['precision']:.2f} R {m['recall']:.2f}"
                                            for d, m in t["detectors"].items())
                  + " | " + "; ".join(f"{r} P {m['precision']:.2f} R {m['recall']:.2f}" for r, m in t["fused"].items()),
                  flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"rows": list(rows.values())}, default=str))
    command = " ".join(["python benchmarks/classifier_generalization.py", *(argv if argv is not None else sys.argv[1:])])
    if rows and (args.rows_from is not None or args.cases is None):
        write(list(rows.values()), Path(args.md), command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
