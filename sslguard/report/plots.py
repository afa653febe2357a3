"""Figures of a detection run, drawn with matplotlib's object API on the Agg canvas.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``, so nothing here
touches matplotlib's global backend or figure registry (safe inside a library, in threads and in
tests), and :func:`save_png` writes it as PNG bytes (atomically when given a path).

Limits: the embedding map is a 2-D projection (PCA by default, t-SNE on request) and can hide
separations that exist in the full space; histograms and ROC curves drop non-finite scores (a detector
may give ``-inf`` to images it did not examine) and say how many they dropped.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sslguard.utils.io import atomic_write_bytes

CLEAN_COLOUR = "#4c72b0"
POISON_COLOUR = "#c44e52"
FLAG_COLOUR = "#dd8452"
NEUTRAL_COLOUR = "#b9bec7"


def save_png(fig: Figure, path: str | os.PathLike | None = None, dpi: int = 110) -> bytes:
    """PNG bytes of ``fig``; also written atomically to ``path`` when given. Metadata is left out so the
    bytes depend only on the figure (reruns give identical files)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return int(np.ceil(n / cols)), cols


# ------------------------------------------------------------------------------------------ scores


@dataclass
class ScoreSeries:
    """What the score plots need from one detector, aligned with the run's index order."""

    name: str
    scores: np.ndarray
    flagged: np.ndarray
    threshold: float


def score_histograms(series: Sequence[ScoreSeries], truth: np.ndarray | None = None, bins: int = 40) -> Figure:
    """One panel per detector: score histogram (split clean/poisoned when ``truth`` is given) and the
    detector's threshold as a dashed line."""
    rows, cols = _grid(max(1, len(series)), 3)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    for i, s in enumerate(series):
        ax = fig.add_subplot(rows, cols, i + 1)
        scores = np.asarray(s.scores, dtype=np.float64)
        ok = np.isfinite(scores)
        fin = scores[ok]
        if len(fin) == 0:
            ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
        else:
            lo, hi = float(fin.min()), float(fin.max())
            if np.isfinite(s.threshold):
                lo, hi = min(lo, float(s.threshold)), max(hi, float(s.threshold))
            if hi <= lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, bins + 1)
            if truth is not None:
                t = np.asarray(truth, dtype=bool)
                ax.hist([scores[ok & ~t], scores[ok & t]], bins=edges, stacked=True,
                        color=[CLEAN_COLOUR, POISON_COLOUR], label=["clean", "poisoned"])
            else:
                ax.hist(fin, bins=edges, color=CLEAN_COLOUR, label="images")
            if np.isfinite(s.threshold):
                ax.axvline(float(s.threshold), color="k", ls="--", lw=1.2, label=f"threshold {s.threshold:.3g}")
            ax.set_yscale("symlog", linthresh=10)
            ax.legend(fontsize=7, frameon=False)
        dropped = int((~ok).sum())
        extra = f", {dropped} not scored" if dropped else ""
        ax.set_title(f"{s.name}  ({int(np.asarray(s.flagged).sum())} flagged{extra})", fontsize=9)
        ax.set_xlabel("score (higher = more suspicious)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def roc_curves(series: Sequence[ScoreSeries], truth: np.ndarray) -> Figure:
    """ROC curve of each detector's scores against ``truth`` (non-finite scores rank lowest), with the
    AUROC in the legend and each detector's own operating point (its ``flagged``) as a dot."""
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.asarray(truth, dtype=bool)
    fig = Figure(figsize=(4.8, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color=NEUTRAL_COLOUR, lw=1, ls=":")
    colours = [f"C{i}" for i in range(10)]
    for i, s in enumerate(series):
        scores = np.asarray(s.scores, dtype=np.float64)
        fin = _finite(scores)
        floor = (fin.min() - 1.0) if len(fin) else 0.0
        scores = np.where(np.isfinite(scores), scores, floor)
        if not (0 < truth.sum() < len(truth)):
            continue
        fpr, tpr, _ = roc_curve(truth, scores)
        auc = roc_auc_score(truth, scores)
        c = colours[i % len(colours)]
        ax.plot(fpr, tpr, color=c, lw=1.6, label=f"{s.name} (AUROC {auc:.3f})")
        flagged = np.asarray(s.flagged, dtype=bool)
        op_tpr = (flagged & truth).sum() / max(1, truth.sum())
        op_fpr = (flagged & ~truth).sum() / max(1, (~truth).sum())
        ax.plot([op_fpr], [op_tpr], "o", color=c, ms=5)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title("ROC (dots: each detector's flags)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- embedding


def project_2d(embeddings: np.ndarray, method: str = "pca", seed: int = 0, max_points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, xy)``: a seeded subsample of at most ``max_points`` rows and their 2-D projection.

    PCA (``svd_solver="full"``, deterministic) or t-SNE (slow: use on a few thousand points). Rows are
    L2-normalised first, as the clustering sees them.
    """
    n = len(embeddings)
    pos = np.arange(n)
    if n > max_points:
        pos = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    x = np.asarray(np.asarray(embeddings)[pos], dtype=np.float64)  # only the subsample: the rows may be memory-mapped
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(x) < 3 or x.shape[1] < 2:
        return pos, np.zeros((len(x), 2))
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x)
    elif method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, svd_solver="full").fit_transform(x)
    else:
        raise ValueError(f"report.embedding: choose pca or tsne, not {method!r}")
    return pos, np.asarray(xy, dtype=np.float64)


def embedding_map(xy: np.ndarray, clusters: np.ndarray, flagged: np.ndarray, truth: np.ndarray | None = None,
                  method: str = "pca") -> Figure:
    """Two panels over the same 2-D projection: coloured by k-means cluster, and by flag (poisoned
    images ringed in red when ground truth exists)."""
    clusters = np.asarray(clusters)
    flagged = np.asarray(flagged, dtype=bool)
    fig = Figure(figsize=(10.5, 4.6))
    ax1 = fig.add_subplot(1, 2, 1)
    k = int(clusters.max()) + 1 if len(clusters) else 1
    cmap = "tab20" if k <= 20 else "gist_ncar"
    ax1.scatter(xy[:, 0], xy[:, 1], c=clusters, cmap=cmap, s=6, lw=0, vmin=0, vmax=max(1, k - 1))
    ax1.set_title(f"by k-means cluster (k={k})", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.scatter(xy[~flagged, 0], xy[~flagged, 1], c=NEUTRAL_COLOUR, s=6, lw=0, label=f"kept ({int((~flagged).sum())})")
    ax2.scatter(xy[flagged, 0], xy[flagged, 1], c=FLAG_COLOUR, s=9, lw=0, label=f"flagged ({int(flagged.sum())})")
    if truth is not None:
        t = np.asarray(truth, dtype=bool)
        ax2.scatter(xy[t, 0], xy[t, 1], facecolors="none", edgecolors=POISON_COLOUR, s=26, lw=0.8,
                    label=f"poisoned ({int(t.sum())})")
    ax2.set_title("by flag", fontsize=10)
    ax2.legend(fontsize=7, loc="best", frameon=False, markerscale=1.5)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method.upper()} 1", fontsize=8)
        ax.set_ylabel(f"{method.upper()} 2", fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- gallery


@dataclass
class GalleryItem:
    """One image of the top-flagged gallery: pixels, optional heatmap (same H x W) and evidence box."""

    index: int
    image: np.ndarray
    score: float
    detector: str
    label: str = ""
    heatmap: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
    poisoned: bool | None = None


def flagged_gallery(items: Sequence[GalleryItem], cols: int = 6, title: str = "") -> Figure:
    """Grid of images with their CAM overlay and the window that scored (cyan box). The caption gives
    the index, the class, with ground truth whether it is really poisoned (red = poisoned), and
    ``detector`` (where the flag and the overlay come from)."""
    rows, cols = _grid(max(1, len(items)), cols)
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows))
    for i, it in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = np.asarray(it.image)
        ax.imshow(img, interpolation="nearest")
        if it.heatmap is not None:
            h = np.asarray(it.heatmap, dtype=np.float64)
            if h.max() > h.min():
                h = (h - h.min()) / (h.max() - h.min())
            ax.imshow(h, cmap="jet", alpha=0.35, interpolation="bilinear", extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
        if it.box is not None and it.box[2] > 0 and it.box[3] > 0:
            x, y, w, h_ = it.box
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h_, fill=False, ec="cyan", lw=1.6))
        colour = "black" if it.poisoned is None else (POISON_COLOUR if it.poisoned else "#2a6f2a")
        truth = "" if it.poisoned is None else (" \u00b7 POISONED" if it.poisoned else " \u00b7 clean")
        label = f" \u00b7 class {it.label}" if it.label else ""
        ax.set_title(f"#{it.index}{label}{truth}\n{it.detector}", fontsize=6.5, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_edgecolor(colour)
            sp.set_linewidth(1.5 if it.poisoned else 0.5)
    if not items:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no image was flagged", ha="center", va="center")
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- per class


def class_counts(labels: np.ndarray, class_names: Sequence[str], flagged: np.ndarray,
                 truth: np.ndarray | None = None) -> Figure:
    """Grouped bars per class: images, flagged and (with ground truth) poisoned. Unlabeled corpora
    (label -1) show one group."""
    labels = np.asarray(labels)
    flagged = np.asarray(flagged, dtype=bool)
    ids = np.unique(labels)
    names = [class_names[int(c)] if 0 <= int(c) < len(class_names) else ("unlabeled" if c < 0 else str(c)) for c in ids]
    total = np.asarray([(labels == c).sum() for c in ids])
    flg = np.asarray([(flagged & (labels == c)).sum() for c in ids])
    groups = [("images", total, NEUTRAL_COLOUR), ("flagged", flg, FLAG_COLOUR)]
    if truth is not None:
        t = np.asarray(truth, dtype=bool)
        groups.append(("poisoned", np.asarray([(t & (labels == c)).sum() for c in ids]), POISON_COLOUR))
    fig = Figure(figsize=(max(5.0, 0.6 * len(ids) + 2.5), 3.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(groups)
    x = np.arange(len(ids))
    for j, (name, vals, colour) in enumerate(groups):
        bars = ax.bar(x + (j - (len(groups) - 1) / 2) * width, vals, width, color=colour, label=name)
        if name != "images":
            ax.bar_label(bars, labels=[str(int(v)) if v else "" for v in vals], fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8, rotation=0 if len(ids) <= 12 else 60)
    ax.set_ylabel("images")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("per class", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- backdoor


def backdoor_bars(rows: Mapping[str, Mapping[str, float]]) -> Figure:
    """Bars of the backdoor check for each encoder (``{"before": {"triggered": r, "random_patch": r,
    "knn_accuracy": a}, "after": {...}}``): kNN target rate with the trigger vs with a random patch,
    and clean kNN accuracy."""
    names = list(rows)
    metrics = [("knn_accuracy", "clean kNN accuracy", NEUTRAL_COLOUR), ("triggered", "target rate, trigger", POISON_COLOUR),
               ("random_patch", "target rate, random patch", CLEAN_COLOUR)]
    fig = Figure(figsize=(1.9 * len(names) + 3.0, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(metrics)
    x = np.arange(len(names))
    for j, (key, label, colour) in enumerate(metrics):
        vals = np.asarray([float(rows[n].get(key, np.nan)) for n in names])
        bars = ax.bar(x + (j - 1) * width, np.nan_to_num(vals), width, color=colour, label=label)
        ax.bar_label(bars, labels=["" if not np.isfinite(v) else f"{v:.2f}" for v in vals], fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("encoder: does the trigger steer it to the target class?", fontsize=10)
    fig.tight_layout()
    return fig


