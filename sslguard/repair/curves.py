"""Repair curves side by side: clean accuracy and ASR against the repair's own x axis.

Two repairs change a backdoored model in different units: clean fine-tuning by epochs
(:func:`sslguard.repair.finetune`), l-infinity pruning by the fraction of last-stage neurons pruned
(:mod:`sslguard.repair.linf_pruning`). :func:`plot_repair_curves` puts each kind of x axis in its own
panel of one figure, with the y axes (clean accuracy, ASR, both in [0, 1]) shared, so the two repairs
read against each other; :func:`repair_curves_markdown` gives the same numbers as a table.

The figure is built with matplotlib's object API on the Agg canvas (no ``pyplot``, no global state)
and written with :func:`sslguard.report.plots.save_png`, like the report's other figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from sslguard.report.html import Figure as ReportFigure
from sslguard.report.plots import save_png

CLEAN_STYLE = {"linestyle": "-", "marker": "o"}
ASR_STYLE = {"linestyle": "--", "marker": "s"}
COLOURS = ("#4c72b0", "#c44e52", "#55a868", "#8172b2", "#dd8452", "#937860")


@dataclass
class RepairCurve:
    """One repair's curves: ``clean_acc[i]`` and ``asr[i]`` at ``x[i]`` (``x_label`` names the axis)."""

    name: str
    x: np.ndarray
    x_label: str
    clean_acc: np.ndarray
    asr: np.ndarray

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64)
        self.clean_acc = np.asarray(self.clean_acc, dtype=np.float64)
        self.asr = np.asarray(self.asr, dtype=np.float64)
        if not (len(self.x) == len(self.clean_acc) == len(self.asr)):
            raise ValueError(f"{self.name}: x, clean_acc and asr must have the same length "
                             f"({len(self.x)}, {len(self.clean_acc)}, {len(self.asr)})")


def as_curve(result: Any, name: str | None = None) -> RepairCurve:
    """A :class:`RepairCurve` from a repair result (fine-tuning, l-infinity pruning) or a curve itself.

    A result is read through its ``x``, ``x_label``, ``clean_acc`` and ``asr`` attributes; a pruning
    result that names its x values ``fractions`` is read as "fraction of neurons pruned".
    """
    if isinstance(result, RepairCurve):
        return result if name is None else RepairCurve(name, result.x, result.x_label, result.clean_acc, result.asr)
    label = name or getattr(result, "name", type(result).__name__)
    x = getattr(result, "x", None)
    x_label = getattr(result, "x_label", None)
    if x is None and hasattr(result, "fractions"):
        x, x_label = result.fractions, x_label or "fraction of neurons pruned"
    if x is None or not hasattr(result, "clean_acc") or not hasattr(result, "asr"):
        raise TypeError(f"{type(result).__name__} has no repair curves (x or fractions, clean_acc, asr)")
    return RepairCurve(str(label), np.asarray(x), str(x_label or "x"), np.asarray(result.clean_acc), np.asarray(result.asr))


def plot_repair_curves(results: Sequence[Any], path: str | os.PathLike | None = None, *,
                       title: str | None = None) -> Figure:
    """One figure, one panel per x axis kind (epochs of fine-tuning, fraction of neurons pruned, ...).

    Each panel draws every repair with that x axis: clean accuracy solid with circles, ASR dashed with
    squares, one colour per repair; the y axes are shared and span [0, 1]. Written as PNG to ``path``
    when given (atomically). Returns the :class:`~matplotlib.figure.Figure`.
    """
    curves = [as_curve(r) for r in results]
    if not curves:
        raise ValueError("no repair results to plot")
    kinds: list[str] = []
    for c in curves:
        if c.x_label not in kinds:
            kinds.append(c.x_label)
    fig = Figure(figsize=(4.6 * len(kinds), 3.6))
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        for i, c in enumerate(cv for cv in curves if cv.x_label == kind):
            colour = COLOURS[i % len(COLOURS)]
            ax.plot(c.x, c.clean_acc, color=colour, label=f"{c.name}: clean acc", **CLEAN_STYLE)
            if np.isfinite(c.asr).any():
                ax.plot(c.x, c.asr, color=colour, label=f"{c.name}: ASR", **ASR_STYLE)
        ax.set_xlabel(kind)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("clean accuracy (solid) / ASR (dashed)")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_png(fig, path)
    return fig


def repair_curves_markdown(results: Sequence[Any], digits: int = 3) -> str:
    """A markdown table with one row per point of every curve: repair, x axis, x, clean acc, ASR."""
    rows = ["| repair | x axis | x | clean acc | ASR |", "| --- | --- | ---: | ---: | ---: |"]
    for r in results:
        c = as_curve(r)
        for x, acc, asr in zip(c.x, c.clean_acc, c.asr):
            xs = f"{int(x)}" if float(x).is_integer() and c.x_label.startswith("epoch") else f"{x:.{digits}g}"
            rows.append(f"| {c.name} | {c.x_label} | {xs} | {acc:.{digits}f} | {asr:.{digits}f} |")
    return "\n".join(rows) + "\n"


def repair_report_figure(results: Sequence[Any], *, fig_id: str = "repair",
                         title: str = "Repairs: clean accuracy and attack success rate"):
    """The repair curves as a :class:`sslguard.report.html.Figure` (PNG bytes, title, caption) for report.html."""
    curves = [as_curve(r) for r in results]
    png = save_png(plot_repair_curves(curves))
    axes = list(dict.fromkeys(c.x_label for c in curves))
    caption = ("Solid lines: clean accuracy; dashed: attack success rate (triggered non-target test images "
               f"classified as the target). x axes: {'; '.join(axes)}. The first point of each curve is the "
               "model before repair.")
    return ReportFigure(fig_id, title, png, caption)
