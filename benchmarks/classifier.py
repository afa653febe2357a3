"""Classifier-stage benchmark: a supervised model trained on poisoned CIFAR-10, every classifier-stage
detector on it, ART's ActivationDefence and SpectralSignatureDefense on the very same model and data,
and the l-infinity pruning curve.

Scenarios (``scenarios``):

- ``badnets``: all-to-one BadNets (Gu et al. 2017) corner patch, ``rate`` of the training set
  (``rate_of="dataset"``: at 10% of a 10-class set the target class holds about as many poisons as
  clean images), labels flipped to ``target``;
- ``label_consistent``: Turner et al. 2019 with reduced-amplitude four-corner stickers on PGD images of
  the target class (PGD against a clean model trained with the same recipe first), labels unchanged.

ART (``adversarial-robustness-toolbox``) is a benchmark-only dependency (the ``bench`` extra).
Timings are wall-clock on whatever the machine runs besides, each including the method's own forward
passes over the training set.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from sslguard.config import AttackConfig
from sslguard.data import load_cifar10, poison_dataset
from sslguard.data.datasets import IndexedDataset
from sslguard.data.transforms import to_float
from sslguard.metrics import detection_metrics
from sslguard.models.classifier import Classifier, build_classifier, penultimate_activations
from sslguard.repair.linf_pruning import linf_pruning
from sslguard.train.classifier import evaluate_classifier, train_classifier
from sslguard.utils.io import atomic_write_text

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- ART


class _ArtView(nn.Module):
    """The classifier for ART: ART reads activations from the last *registered* top-level module, so an
    identity at the penultimate position is registered last and ART sees the same activations as ours."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.penultimate = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.backbone(x)))


def _dataset_arrays(dataset: IndexedDataset) -> np.ndarray:
    images = np.stack([dataset.load_array(i) for i in range(len(dataset))])
    return to_float(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def run_art(model: Classifier, dataset: IndexedDataset, *, expected_rate: float, cluster_analysis: str,
            x: np.ndarray | None = None, features: np.ndarray | None = None, spectral: bool = True) -> dict[str, Any]:
    """ART ActivationDefence (FastICA to 10 dims, k=2, ``cluster_analysis``) and SpectralSignatureDefense
    on ``model``; returns flags and seconds for each. The time includes ART's own activation pass,
    unless ``features`` (the penultimate activations, dataset order) are handed to ART instead: then
    it is ART's analysis alone, on the very features ours analyses."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    if x is None:
        x = _dataset_arrays(dataset)
    n_classes = model.num_classes
    y = np.eye(n_classes, dtype=np.float32)[np.asarray(dataset.labels)]
    view = _ArtView(model).eval()
    clf = PyTorchClassifier(model=view, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=n_classes,
                            clip_values=(-1.0, 1.0))
    out: dict[str, Any] = {}
    t = time.perf_counter()
    try:
        ac = ActivationDefence(clf, x, y)
        if features is not None:  # ART skips its forward pass when the per-class activations are set
            ac.activations_by_class = ac._segment_by_class(np.asarray(features), y)
        _, is_clean = ac.detect_poison(nb_clusters=2, nb_dims=10, reduce="FastICA", cluster_analysis=cluster_analysis)
        out["art_activation"] = {"flagged": np.asarray(is_clean) == 0, "seconds": time.perf_counter() - t}
    except Exception as exc:  # an ART analyser that crashes is reported as such, not hidden
        out["art_activation"] = {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t}
    if not spectral:
        return out
    if features is not None:  # ART's spectral defence reads activations through the classifier only
        clf.get_activations = lambda *a, **k: np.asarray(features)
    t = time.perf_counter()
    ss = SpectralSignatureDefense(clf, x, y, batch_size=128, eps_multiplier=1.5, expected_pp_poison=expected_rate)
    _, is_clean = ss.detect_poison()
    out["art_spectral"] = {"flagged": np.asarray(is_clean) == 0, "seconds": time.perf_counter() - t}
    return out


# ------------------------------------------------------------------------------------------ scenario


def _split_test(test: IndexedDataset, n_eval: int, n_benign: int, seed: int) -> tuple[IndexedDataset, IndexedDataset]:
    """Disjoint per-class draws from the test split: an evaluation set and a trusted benign set."""
    rng = np.random.default_rng([seed, 11])
    ev, be = [], []
    for c in np.unique(test.labels):
        pos = rng.permutation(np.flatnonzero(test.labels == c))
        ev.append(pos[:n_eval])
        be.append(pos[n_eval:n_eval + n_benign])
    return test.subset(np.sort(np.concatenate(ev))), test.subset(np.sort(np.concatenate(be)))


def _trained(key: str, work_dir, build, train_fn):
    """A model trained by ``train_fn`` or, when ``work_dir`` holds one under ``key``, loaded from there."""
    from pathlib import Path

    model = build()
    path = Path(work_dir) / f"{key}.pt" if work_dir else None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), float("nan")
    t = time.perf_counter()
    train_fn(model)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), time.perf_counter() - t


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def run_scenario(name: str, train_clean: IndexedDataset, eval_set: IndexedDataset, benign: IndexedDataset, *,
                 backbone: str, width: int, epochs: int, batch_size: int, lr: float, rate: float, rate_of: str,
                 target: int, trigger_fraction: float, lc_rate: float, lc_amplitude: float, lc_epsilon: float, art: bool, seed: int,
                 progress: bool, work_dir: str | None = None) -> dict[str, Any]:
    from sslguard.detectors import get_detector

    res: dict[str, Any] = {"scenario": name}
    n_cls = train_clean.num_classes
    t0 = time.perf_counter()
    if name == "badnets":
        attack = AttackConfig(name="badnets", target=target, rate=rate, rate_of=rate_of, seed=seed,
                              params={"size_fraction": trigger_fraction}).build()
    elif name == "label_consistent":
        clean_model, _ = _trained(
            f"clean_{backbone}{width}_e{epochs}_n{len(train_clean)}_s{seed}", work_dir,
            lambda: build_classifier(backbone, n_cls, width=width, seed=seed),
            lambda m: train_classifier(m, train_clean, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress))
        res["pgd_model"] = evaluate_classifier(clean_model, eval_set)
        attack = AttackConfig(name="label_consistent", target=target, rate=lc_rate, rate_of="target", seed=seed,
                              params={"epsilon": lc_epsilon, "amplitude": lc_amplitude}).build(model=clean_model)
    else:
        raise ValueError(f"unknown scenario {name!r}; choose badnets or label_consistent")
    train, _ = poison_dataset(train_clean, attack)
    truth = train.poisoned_mask
    tag = f"{name}_{backbone}{width}_e{epochs}_n{len(train_clean)}_s{seed}_" + (
        f"r{rate}{rate_of}_t{trigger_fraction}" if name == "badnets" else f"r{lc_rate}_a{lc_amplitude}_e{lc_epsilon}")
    model, train_seconds = _trained(
        tag, work_dir, lambda: build_classifier(backbone, n_cls, width=width, seed=seed),
        lambda m: train_classifier(m, train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress))
    res["model"] = {**evaluate_classifier(model, eval_set, attack), "train_seconds": train_seconds,
                    "n_train": len(train), "n_poison": int(truth.sum())}
    res["setup_seconds"] = time.perf_counter() - t0
    tgt = np.asarray(train.labels) == target
    share = float(truth[tgt].mean())
    res["target_poison_share"] = share
    rows: dict[str, dict[str, Any]] = {}

    def add(key, result, seconds, note="", analysis_seconds=float("nan")):
        rows[key] = {**detection_metrics(result.scores, result.flagged, truth), "seconds": seconds,
                     "analysis_seconds": analysis_seconds, "note": note}

    # Our seconds include reading the dataset and the forward pass (t_act), once per row, like ART's;
    # "analysis s" is the time on the precomputed activations alone.
    # Batch 128, ART's batch size here (on one CPU thread it is also faster than 256).
    (keys, acts), t_act = _timed(penultimate_activations, model, train, batch_size=128, progress=progress)
    res["activation_seconds"] = t_act
    X = acts["penultimate"]
    # The trusted benign images (also used by critical_layer and pruning) as a clean reference.
    (_, bacts), t_ref = _timed(penultimate_activations, model, benign, batch_size=128, progress=progress)
    R = bacts["penultimate"]
    ac = get_detector("activation_clustering")
    r, t = _timed(ac, model, train, activations=X)
    add("activation_clustering", r, t + t_act, "defaults: ICA-10 (whitened PCA, same clusters as FastICA), k=2, "
        "activation-space silhouette outlier, auto cluster choice", t)
    res["per_class"] = {"activation_clustering": r.info["per_class"]}
    r, t = _timed(ac, model, train, activations=X, reference=benign, reference_activations=R)
    add("activation_clustering[reference]", r, t + t_act + t_ref, f"defaults + the {len(benign)} trusted benign images "
        "decide the class (binomial test: do they avoid one cluster?) and pick the poison cluster (the one "
        "holding fewer of them); what the pipeline does when it has a labelled test split", t)
    res["per_class"]["activation_clustering[reference]"] = r.info["per_class"]
    r, t = _timed(ac, model, train, activations=X, reduce="fastica")
    add("activation_clustering[fastica]", r, t + t_act, "defaults with sklearn FastICA run in full (ART's settings): "
        "same flags as the whitened PCA, ICA iterations included", t)
    for dec, pc, note in (("outlier", "smaller", "ICA-10, silhouette outlier, smaller cluster"),
                          ("outlier", "silhouette", "ICA-10, silhouette outlier, tighter cluster"),
                          ("size", "smaller", "ICA-10, paper rule: relative size <= 0.35, smaller cluster"),
                          ("silhouette", "smaller", "ICA-10, paper rule: silhouette >= 0.10, smaller cluster")):
        r, t = _timed(ac, model, train, activations=X, decision=dec, poison_cluster=pc)
        add(f"activation_clustering[{dec},{pc}]", r, t + t_act, note, t)
    from sslguard.detectors.heatmap_clustering import label_heatmaps

    H, t_h = _timed(label_heatmaps, model, train, progress=progress)
    HR, t_hr = _timed(label_heatmaps, model, benign, progress=progress)
    hc = get_detector("heatmap_clustering")
    r, t = _timed(hc, model, train, heatmaps=H)
    add("heatmap_clustering", r, t + t_h, "defaults: LRP EpsilonPlusFlat, 16x16, silhouette outlier, auto cluster choice", t)
    res["per_class"]["heatmap_clustering"] = r.info["per_class"]
    r, t = _timed(hc, model, train, heatmaps=H, reference=benign, reference_heatmaps=HR)
    add("heatmap_clustering[reference]", r, t + t_h + t_hr, f"defaults + the {len(benign)} trusted benign images "
        "decide the class and pick the poison cluster, as for activation clustering", t)
    res["per_class"]["heatmap_clustering[reference]"] = r.info["per_class"]
    for dec, pc, note in (("outlier", "smaller", "silhouette outlier, smaller cluster"),
                          ("outlier", "silhouette", "silhouette outlier, tighter cluster"),
                          ("size", "smaller", "paper rule: relative size <= 0.35, smaller cluster"),
                          ("silhouette", "smaller", "paper rule: silhouette >= 0.10, smaller cluster")):
        r, t = _timed(hc, model, train, heatmaps=H, decision=dec, poison_cluster=pc)
        add(f"heatmap_clustering[{dec},{pc}]", r, t + t_h, note, t)
    cl, t = _timed(get_detector("critical_layer"), model, train, benign, progress=progress)
    add("critical_layer", cl, t, f"critical layers {cl.info['critical_layers']}, {len(benign)} benign images")
    res["critical_layer_info"] = {"critical_layers": cl.info["critical_layers"], "layer_gap": cl.info["layer_gap"]}
    # Per-layer AUROC with ground truth, to compare the layer chosen without it.
    from sslguard.models.classifier import layer_features

    _, lf = layer_features(model, train, cl.info["layers"])
    _, lb = layer_features(model, benign, cl.info["layers"])
    from sslguard.detectors.critical_layer import critical_layer_scores

    res["critical_layer_oracle_auroc"] = {}
    for layer in cl.info["layers"]:
        s, f, _, _ = critical_layer_scores(lf, train.labels, lb, benign.labels, layers=[layer])
        res["critical_layer_oracle_auroc"][layer] = detection_metrics(s, f, truth)["auroc"]
    eps = min(0.5, max(share, 1e-3))
    spd = get_detector("spectral")
    sp, t = _timed(spd, model, train, activations=X, expected_rate=eps, class_test="none")
    add("spectral[tran]", sp, t + t_act, f"eps = {eps:.2f} (true target-class share, capped at 0.5), 1.5 eps removed "
        "from every class; centred at the class mean (Tran et al.)", t)
    sp, t = _timed(spd, model, train, activations=X, expected_rate=eps)
    add("spectral", sp, t + t_act, f"defaults: eps = {eps:.2f}, 1.5 eps removed from classes whose top-direction "
        f"variance share is an outlier (filtered: {sp.info['filtered_classes']})", t)
    res["per_class"]["spectral"] = sp.info["per_class"]
    sp, t = _timed(spd, model, train, activations=X, expected_rate=eps, reference=benign, reference_activations=R)
    add("spectral[reference]", sp, t + t_act + t_ref, f"eps = {eps:.2f}; centred at the {len(benign)} trusted benign "
        f"images' class mean; classes whose mean shift along v is an outlier (filtered: {sp.info['filtered_classes']})", t)
    res["per_class"]["spectral[reference]"] = sp.info["per_class"]
    res["rows"] = rows
    if art:
        # ART takes an in-memory float array; building it from the dataset is part of ART's cost, as
        # reading the dataset is part of ours.
        x, t_x = _timed(_dataset_arrays, train)
        res["art_input_seconds"] = t_x
        same = run_art(model, train, expected_rate=eps, cluster_analysis="smaller", x=x, features=X)
        res["art_same_features"] = {k: {"seconds": v["seconds"], "flagged": int(np.sum(v.get("flagged", 0)))}
                                    for k, v in same.items()}
        for analysis, ours in (("relative-size", "activation_clustering[size,smaller]"),
                               ("silhouette-scores", "activation_clustering[silhouette,smaller]"),
                               ("smaller", None)):
            a = run_art(model, train, expected_rate=eps, cluster_analysis=analysis, x=x, spectral=analysis == "smaller")
            key, note = f"ART ActivationDefence[{analysis}]", f"FastICA-10, k=2, {analysis}" + (f"; compare {ours}" if ours else "")
            if "error" in a["art_activation"]:
                rows[key] = {**{k: float("nan") for k in ("f1", "precision", "recall", "fpr", "auroc")}, "n_flagged": "-",
                             "seconds": a["art_activation"]["seconds"] + t_x, "note": f"{note}; ART failed: {a['art_activation']['error'][:120]}"}
                continue
            flagged = a["art_activation"]["flagged"]
            same_ok = analysis == "smaller" and "flagged" in same["art_activation"]
            agree = same_ok and bool(np.array_equal(same["art_activation"]["flagged"], flagged))
            rows[key] = {**detection_metrics(flagged.astype(float), flagged, truth), "seconds": a["art_activation"]["seconds"] + t_x,
                         "analysis_seconds": same["art_activation"]["seconds"] if same_ok else float("nan"),
                         "note": note + f" (AUROC of the flags; seconds include {t_x:.1f} s to build ART's input array"
                                 + (f"; same flags on our activations: {agree}" if same_ok else "")
                                 + "; ART seeds neither FastICA nor k-means, so two ART runs can differ)"}
        flagged = a["art_spectral"]["flagged"]
        agree = bool(np.array_equal(same["art_spectral"]["flagged"], flagged))
        rows["ART SpectralSignatureDefense"] = {**detection_metrics(flagged.astype(float), flagged, truth),
                                                "seconds": a["art_spectral"]["seconds"] + t_x,
                                                "analysis_seconds": same["art_spectral"]["seconds"],
                                                "note": f"eps = {eps:.2f}, x1.5, every class (AUROC of the flags; seconds "
                                                        f"include {t_x:.1f} s to build ART's input array; same flags on "
                                                        f"our activations: {agree}); ART projects the uncentred activations"}
    curves = {}
    # "suspect": the (unlabelled) training set stands in for the paper's triggered images; the other
    # two orders rank on the clean images alone. The attack only draws the ASR curve.
    for order in ("suspect", "ascending", "descending"):
        p, t = _timed(linf_pruning, model, benign, val=eval_set, suspect=train, attack=attack, order=order)
        curves[order] = {"fractions": p.fractions.tolist(), "clean_acc": p.clean_acc.tolist(), "asr": p.asr.tolist(),
                         "chosen_fraction": p.chosen_fraction, **p.info, "seconds": t}
    res["linf_pruning"] = curves
    return res


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def to_markdown(results: dict[str, Any]) -> str:
    """The benchmark as a markdown report (one section per scenario)."""
    lines = ["# Classifier-stage detectors on poisoned CIFAR-10", "", f"Command: `{results['argv']}`", "",
             f"Setup: {results['setup']}", ""]
    for sc in results["scenarios"]:
        m = sc["model"]
        lines += [f"## {sc['scenario']}", "",
                  f"Model: clean accuracy {m['clean_acc']:.3f} ({m['n_clean']} test images), ASR {m['asr']:.3f} "
                  f"({m['n_asr']} triggered non-target test images); {m['n_poison']} poisons in {m['n_train']} training "
                  f"images ({sc['target_poison_share']:.0%} of the target-labelled images); trained in {m['train_seconds']:.0f} s "
                  "(nan: loaded from the work folder).", ""]
        if "pgd_model" in sc:
            lines += [f"PGD source model (clean): accuracy {sc['pgd_model']['clean_acc']:.3f}.", ""]
        lines += ["Seconds: end to end (reading the images, the method's forward passes, the analysis); analysis s: the "
                  "analysis alone on the same precomputed penultimate activations (ART's included) or heatmaps.", "",
                  "| detector | F1 | precision | recall (TPR) | FPR | AUROC | flagged | seconds | analysis s | setting |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name, r in sc["rows"].items():
            lines.append(f"| {name} | {_fmt(r['f1'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['fpr'])} | "
                         f"{_fmt(r['auroc'])} | {r['n_flagged']} | {r['seconds']:.1f} | "
                         f"{_fmt(r.get('analysis_seconds', float('nan')), 2)} | {r['note']} |")
        ci = sc["critical_layer_info"]
        lines += ["", "Critical layer: per-layer gap (no ground truth, max over classes) and, for reference, the "
                  "AUROC each single layer would give with ground truth:", "",
                  "| layer | gap | AUROC (single layer) |", "| --- | ---: | ---: |"]
        for layer, g in ci["layer_gap"].items():
            mark = " (chosen)" if layer in ci["critical_layers"] else ""
            lines.append(f"| {layer}{mark} | {g:.2f} | {_fmt(sc['critical_layer_oracle_auroc'][layer])} |")
        for order, c in sc["linf_pruning"].items():
            rel = round(1 - c['asr_after'] / c['asr_before'], 2) + 0.0 if c['asr_before'] > 0 else float("nan")
            lines += ["", f"l-infinity pruning ({order} order; chosen without the trigger: the largest fraction within "
                      f"{c['max_acc_drop']:.2f} of the clean accuracy: {c['chosen_fraction']:.3f} of {c['n_channels']} "
                      f"channels, clean acc {c['clean_acc_before']:.3f} -> {c['clean_acc_after']:.3f}, ASR "
                      f"{c['asr_before']:.3f} -> {c['asr_after']:.3f}, relative ASR reduction {rel:.0%}):", "",
                      "| fraction pruned | clean acc | ASR |", "| ---: | ---: | ---: |"]
            for f, a, s in zip(c["fractions"], c["clean_acc"], c["asr"]):
                lines.append(f"| {f:.3f} | {a:.3f} | {_fmt(s)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def run_classifier_benchmark(
    *,
    scenarios: Sequence[str] = ("badnets", "label_consistent"),
    n_per_class: int = 500,
    n_eval_per_class: int = 200,
    n_benign_per_class: int = 20,
    backbone: str = "convnet4",
    width: int = 16,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.05,
    rate: float = 0.1,
    rate_of: str = "dataset",
    target: int = 0,
    trigger_fraction: float = 0.15,
    lc_rate: float = 0.5,
    lc_amplitude: float = 64.0,
    lc_epsilon: float = 8.0,
    art: bool = True,
    threads: int | None = None,
    seed: int = 0,
    cifar_root: str | None = None,
    output: str | None = "benchmarks/classifier.md",
    work_dir: str | None = None,
    progress: bool = False,
    argv: str = "",
) -> dict[str, Any]:
    """Run the scenarios on a per-class CIFAR-10 subset and write the markdown table to ``output`` (and the
    full results, per-class statistics included, beside it as ``.json``). ``work_dir`` keeps trained
    models, so a rerun with the same settings skips training."""
    from sslguard.data import subset_per_class
    from sslguard.utils.seed import seed_everything

    if threads is not None:
        torch.set_num_threads(threads)
        # numpy/scipy BLAS and sklearn's OpenMP pools ignore torch's setting; on a shared machine their
        # default (one thread per core) oversubscribes it and made ICA/SVD/k-means 10-100x slower for
        # both ART and ours. threadpoolctl only reaches libraries already loaded, hence the imports.
        import importlib

        from threadpoolctl import threadpool_limits

        for lib in ("scipy.linalg", "sklearn.cluster"):
            importlib.import_module(lib)
        threadpool_limits(threads)
    seed_everything(seed)
    train = subset_per_class(load_cifar10(cifar_root, "train"), n_per_class, seed)
    eval_set, benign = _split_test(load_cifar10(cifar_root, "test"), n_eval_per_class, n_benign_per_class, seed)
    setup = (f"CIFAR-10 (JPEG copy) {n_per_class}/class train, {n_eval_per_class}/class test, {n_benign_per_class}/class "
             f"trusted benign (test split, disjoint); {backbone} width {width}, {epochs} epochs, batch {batch_size}, "
             f"lr {lr}, SGD+cosine, crop+flip; target {target}; badnets patch {trigger_fraction:g} of the side, "
             f"{rate:g} of the {rate_of}; label-consistent: {lc_rate:g} of the target class, PGD eps {lc_epsilon:g}, "
             f"sticker amplitude {lc_amplitude:g}; torch threads {torch.get_num_threads()}"
             + (f", BLAS/OpenMP threads {threads}" if threads is not None else ""))
    results: dict[str, Any] = {"argv": argv, "setup": setup, "scenarios": []}
    for name in scenarios:
        log.info("scenario %s", name)
        results["scenarios"].append(run_scenario(
            name, train, eval_set, benign, backbone=backbone, width=width, epochs=epochs, batch_size=batch_size, lr=lr,
            rate=rate, rate_of=rate_of, target=target, trigger_fraction=trigger_fraction, lc_rate=lc_rate, lc_amplitude=lc_amplitude, lc_epsilon=lc_epsilon,
            art=art, seed=seed, progress=progress, work_dir=work_dir))
        if output:
            from sslguard.utils.io import atomic_write_json

            atomic_write_text(output, to_markdown(results))
            atomic_write_json(str(output).rsplit(".", 1)[0] + ".json", results)
    return results
