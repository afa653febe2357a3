"""Write a finished run's figures, ``summary.json`` and ``report.html`` from a :class:`ReportContext`.

The report only draws: everything it shows (scores, flags, metrics, notices, the gallery's Grad-CAM
evidence) is computed by the pipeline's stages and handed over in the context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sslguard.cluster import AUTO_K_IMAGES_PER_CLUSTER, AUTO_K_MIN, resolve_k
from sslguard.config import dump_yaml, to_dict
from sslguard.report import html as H
from sslguard.report import plots as P
from sslguard.utils.io import atomic_write_json, atomic_write_text
from sslguard.utils.rundir import fingerprint


@dataclass
class ReportContext:
    """What a report shows. ``cfg`` is the run's :class:`~sslguard.config.DetectConfig`, ``rd`` its
    :class:`~sslguard.utils.rundir.RunDir`, ``data`` its corpus (keys, labels, truth, paths), ``assignments``
    the k-means cluster of each image; ``gallery(top)`` returns the :class:`~sslguard.report.plots.GalleryItem`
    of each top flagged position (called only when the report is drawn)."""

    cfg: Any
    rd: Any
    data: Any
    embeddings: np.ndarray
    assignments: np.ndarray
    detections: dict[str, Any]
    fused: Any
    metrics: dict[str, dict[str, float]]
    backdoor: dict[str, Any] | None
    retrain: dict[str, Any] | None
    classifier_eval: dict[str, Any] | None
    seconds: float
    gallery: Callable[[np.ndarray], list[Any]]
    fingerprints: dict[str, str] = field(default_factory=dict)
    notices: list[tuple[str, str]] = field(default_factory=list)


def write_report(ctx: ReportContext) -> dict[str, Any]:
    """Write figures, summary.json and report.html for a finished run (a cached stage); returns the summary."""
    cfg, rd, data = ctx.cfg, ctx.rd, ctx.data
    detections, fused, metrics, backdoor, retrain = ctx.detections, ctx.fused, ctx.metrics, ctx.backdoor, ctx.retrain
    rc = cfg.report
    truth = data.truth
    keys = data.keys
    labels = np.asarray(data.train.labels)
    classes = list(data.train.classes)
    flagged = np.asarray(fused.flagged, dtype=bool)
    order_flagged = np.flatnonzero(flagged)[np.argsort(-fused.scores[flagged], kind="stable")]
    top = order_flagged[: rc.top_k]

    fp = fingerprint("report", to_dict(rc), sorted(ctx.fingerprints.items()), [(lvl, t) for lvl, t in ctx.notices])
    figure_names = ["scores", "embedding", "classes"] + (["flagged_gallery"] if rc.top_k > 0 else [])
    if truth is not None:
        figure_names.append("roc")
    if backdoor and backdoor.get("before"):
        figure_names.append("backdoor")
    files = ["summary.json", "report.html"] + [f"figures/{n}.png" for n in figure_names]

    summary: dict[str, Any] = {}

    class_name = data.class_name
    def compute() -> None:
        nonlocal summary
        figs: dict[str, bytes] = {}
        series = [P.ScoreSeries(n, r.scores, r.flagged, r.threshold) for n, r in detections.items()]
        figs["scores"] = P.save_png(P.score_histograms(series, truth), rd.path("figures/scores.png"))
        if truth is not None:
            figs["roc"] = P.save_png(P.roc_curves(series + [P.ScoreSeries("fused", fused.scores, fused.flagged,
                                                                           fused.threshold)], truth),
                                     rd.path("figures/roc.png"))
        pos, xy = P.project_2d(ctx.embeddings, rc.embedding, seed=cfg.seed)
        figs["embedding"] = P.save_png(
            P.embedding_map(xy, ctx.assignments[pos], flagged[pos], None if truth is None else truth[pos], rc.embedding),
            rd.path("figures/embedding.png"))
        figs["classes"] = P.save_png(P.class_counts(labels, classes, flagged, truth), rd.path("figures/classes.png"))

        items = ctx.gallery(top) if len(top) else []
        if rc.top_k > 0:
            figs["flagged_gallery"] = P.save_png(P.flagged_gallery(items), rd.path("figures/flagged_gallery.png"))
        bd_rows: dict[str, dict[str, float]] = {}
        if backdoor and backdoor.get("before"):
            bd_rows["before (poisoned corpus)"] = backdoor["before"]
            if retrain and retrain.get("after"):
                bd_rows["after (clean manifest)"] = retrain["after"]
            figs["backdoor"] = P.save_png(P.backdoor_bars(bd_rows), rd.path("figures/backdoor.png"))

        n, n_flag = len(keys), int(flagged.sum())
        summary = {
            "run": cfg.name,
            "run_dir": str(rd.root),
            "n_images": n,
            "n_flagged": n_flag,
            "n_kept": n - n_flag,
            "n_skipped_files": len(data.train.skipped),
            "dataset": {"name": cfg.data.name, "root": data.root, "split": cfg.data.split, "classes": classes,
                        "labeled": bool(data.train.has_labels)},
            "attack": to_dict(cfg.attack) if cfg.attack is not None else None,
            "extra_attack": to_dict(cfg.extra_attack) if cfg.extra_attack is not None else None,
            "n_poisoned": int(truth.sum()) if truth is not None else None,
            "detectors": {name: {"n_flagged": int(r.flagged.sum()), "threshold": float(r.threshold),
                                 "info": {k: v for k, v in r.info.items() if k not in ("timings",)}}
                          for name, r in detections.items()},
            "fusion": {**fused.info, "fused_quantile": cfg.fusion.fused_quantile},
            "metrics": metrics,
            "classifier": ctx.classifier_eval,
            "backdoor": backdoor,
            "retrain": retrain,
            "notices": [{"level": lvl, "text": t} for lvl, t in ctx.notices],
            "per_class": [{"class": class_name(int(c)), "label": int(c), "n": int((labels == c).sum()),
                           "flagged": int((flagged & (labels == c)).sum()),
                           **({"poisoned": int((truth & (labels == c)).sum())} if truth is not None else {})}
                          for c in np.unique(labels)],
            "stage_seconds": {k: round(v, 3) for k, v in rd.timings.items()},
            "seconds_to_report": round(ctx.seconds, 1),  # this invocation, from start to the report stage
            "cached_stages": list(rd.cached),
            "files": files,
        }
        atomic_write_json(rd.path("summary.json"), summary)

        content = _content(ctx, figs, bd_rows, order_flagged, class_name, summary, dump_yaml(cfg))
        atomic_write_text(rd.path("report.html"), H.render_html(content))

    rd.run("report", fp, files, compute)
    if not summary:
        summary = json.loads(rd.path("summary.json").read_text())
    return summary


def _content(ctx: ReportContext, figs, bd_rows, order_flagged, class_name, summary, config_yaml) -> H.ReportContent:
    cfg, data, detections, fused, metrics = ctx.cfg, ctx.data, ctx.detections, ctx.fused, ctx.metrics
    classifier_eval = ctx.classifier_eval
    truth = data.truth
    keys = data.keys
    labels = np.asarray(data.train.labels)
    paths = data.paths()
    n, n_flag = summary["n_images"], summary["n_flagged"]
    if truth is not None and "fused" in metrics:
        m = metrics["fused"]
        headline = H.Notice(
            f"{n_flag:,} of {n:,} images flagged; {int(m['n_poisoned'])} were poisoned. "
            f"Flagged set: precision {m['precision']:.2f}, recall {m['recall']:.2f}.",
            "ok" if m["recall"] >= 0.5 else "warn")
    else:
        headline = H.Notice(f"{n_flag:,} of {n:,} images flagged; {n - n_flag:,} kept in the clean manifest. "
                            "No ground truth: no detection metrics.", "info")
    # warnings first (a runaway detector, an encoder that learned nothing), then the headline, then the rest
    notices = ([H.Notice(t, lvl) for lvl, t in ctx.notices if lvl == "warn"] + [headline]
               + [H.Notice(t, lvl) for lvl, t in ctx.notices if lvl != "warn"])

    rows: list[tuple[str, Any]] = [
        ("dataset", f"{cfg.data.name}" + (f" ({data.root})" if data.root else "") + f", split {cfg.data.split}"),
        ("images", n), ("flagged", n_flag), ("kept (clean manifest)", n - n_flag),
        ("skipped input files", len(data.train.skipped)),
    ]
    for label, a, m in zip(data.attack_labels(), [x for x in (cfg.attack, cfg.extra_attack) if x is not None],
                           data.manifests):
        rows.append((f"injected attack: {label}", f"{a.name}, target class {a.target}, rate {a.rate} of {a.rate_of} "
                                                  f"({m.n_poisoned} images" + (", labels flipped)" if any(
                                                      r.label != r.original_label for r in m.records.values()) else ")")))
    rows.append(("encoder", cfg.encoder or f"{cfg.ssl.method} / {cfg.ssl.backbone}, {cfg.ssl.epochs} epochs (trained here)"))
    k_used = resolve_k(cfg.cluster.k, n)
    rows.append(("k-means clusters", f"{k_used} (auto: about {AUTO_K_IMAGES_PER_CLUSTER} images per cluster, at least "
                                     f"{AUTO_K_MIN})" if cfg.cluster.k == "auto" else k_used))
    rows.append(("detectors", ", ".join(f"{k} ({int(r.flagged.sum())} flagged)" for k, r in detections.items())))
    rows.append(("fusion", f"{cfg.fusion.method} of {', '.join(fused.info['detectors'])}; flagged = {cfg.fusion.flag} "
                           f"({'flagged by any of them' if cfg.fusion.flag == 'any' else cfg.fusion.flag})"))
    if classifier_eval and "clean_acc" in classifier_eval:
        asr = classifier_eval.get("asr") or {}
        asr_text = ", ".join(f"{k} {v:.2f}" for k, v in asr.items()) if isinstance(asr, dict) else H.fmt(asr)
        rows.append(("classifier (for classifier-stage detectors)",
                     f"clean test accuracy {classifier_eval['clean_acc']:.3f}; attack success rate: {asr_text or 'n/a'}"))
    cached = summary["cached_stages"]
    rows.append(("run time", f"{sum(summary['stage_seconds'].values()):.1f}s of stages in this invocation"
                             + (f" ({len(cached)} stages reused from an earlier run: {', '.join(cached)})"
                                if cached else "")))

    captions = {
        "scores": ("Score distributions", "Each detector's scores (higher = more suspicious; log-scaled counts). "
                   "Dashed: the detector's threshold; bars right of it are flagged. Red: truly poisoned images."),
        "roc": ("ROC curves", "How well each detector's score ranks poisons above clean images, whatever the threshold."),
        "embedding": ("Embedding map", "2-D projection of the SSL embeddings. Left: k-means clusters the SSL detectors "
                      "examine. Right: flagged images (orange) and, with ground truth, the real poisons (red rings)."),
        "flagged_gallery": ("Top flagged images", "Highest fused score first; the caption names the first detector "
                            "that flagged the image. Overlay: Grad-CAM of the supervised classifier's predicted class "
                            "for a classifier-stage flag (classifier CAM), else of the SSL cluster model (SSL CAM); cyan "
                            "box: the window the detector scored, or the CAM's strongest window. "
                            "Red caption: truly poisoned; green: clean."),
        "classes": ("Counts per class", "Images, flagged images and (with ground truth) poisoned images per class. "
                    "Flags piling up in one class point at a targeted attack."),
        "backdoor": ("Backdoor check", "Red above blue means the encoder sends triggered images to the target class: "
                     "the backdoor was learned."),
    }
    figures = [H.Figure(fid, captions[fid][0], figs[fid], captions[fid][1])
               for fid in ("scores", "roc", "embedding", "flagged_gallery", "classes", "backdoor") if fid in figs]

    det_names = list(detections)
    cols = ["index", "path", "label", "flagged by", *det_names, "fused"] + (["poisoned"] if truth is not None else [])
    if not any(paths):
        cols.remove("path")
    flagged_rows = []
    for i in order_flagged[: cfg.report.max_rows].tolist():
        r = {"index": int(keys[i]), "path": paths[i], "label": class_name(int(labels[i])),
             "flagged by": ", ".join(d for d in det_names if bool(detections[d].flagged[i])) or "fusion",
             "fused": float(fused.scores[i])}
        for d in det_names:
            r[d] = float(detections[d].scores[i])
        if truth is not None:
            r["poisoned"] = bool(truth[i])
        flagged_rows.append(r)

    outputs = [("scores.csv", "every image: per-detector scores, fused score, flag (and ground truth)"),
               ("flagged.txt", "flagged images: index and path"),
               ("clean_indices.txt", "indices of the kept images (retrain on these)")]
    if ctx.rd.path("clean_manifest.txt").exists():
        outputs.append(("clean_manifest.txt", "paths of the kept images, relative to the data root"))
    outputs += [("summary.json", "this report's numbers, for programs"), ("config.yaml", "the resolved configuration"),
                ("versions.json", "package versions")]
    if truth is not None:
        outputs.append(("manifest.csv", "ground truth of the injected attack"))
    if len(data.manifests) > 1:
        outputs.append(("manifest_extra.csv", "ground truth of the extra attack"))
    outputs += [(f"detectors/{d}.csv", f"{d}: scores and evidence") for d in det_names]

    keep = ("triggered", "random_patch", "clean", "lift", "triggered_corpus_bank", "random_patch_corpus_bank",
            "clean_corpus_bank", "knn_accuracy", "n_test")
    bd = {name: {k: row[k] for k in keep if k in row} for name, row in bd_rows.items()}
    return H.ReportContent(
        title=f"sslguard report \u2014 {cfg.name}",
        subtitle=f"{n:,} images, {n_flag:,} flagged, {len(det_names)} detectors",
        notices=notices, summary=rows, metrics=metrics, backdoor=bd, figures=figures,
        flagged_rows=flagged_rows, flagged_columns=cols, n_flagged=n_flag,
        skipped=list(data.train.skipped)[: cfg.report.max_rows], n_skipped=len(data.train.skipped),
        outputs=outputs, config_yaml=config_yaml)
