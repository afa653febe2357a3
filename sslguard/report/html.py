"""report.html: one self-contained file a person can open, mail or attach to an issue.

Figures are embedded as base64 PNG ``data:`` URIs and the style sheet is inline, so the page loads no
external resource and needs no JavaScript. Every value that comes from data (file paths, class names,
reasons) is HTML-escaped. Links to the run's other outputs (``scores.csv`` ...) are relative, so they
work when the run folder is opened or copied as a whole; they are never loaded by the page.

Limits: a page holding many large figures grows with them (a few MB for a 50k-image run with the default
``top_k``); the flagged-image table lists at most ``max_rows`` rows (``scores.csv`` has them all).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from sslguard.data.images import SkippedFile


@dataclass
class Figure:
    """A figure in the report: ``png`` bytes shown inline, with a title and a sentence on how to read it."""

    id: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Notice:
    """A headline message; ``level`` is ``ok``, ``warn`` or ``info``."""

    text: str
    level: str = "info"


@dataclass
class ReportContent:
    title: str
    subtitle: str = ""
    notices: list[Notice] = field(default_factory=list)
    summary: list[tuple[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    backdoor: dict[str, dict[str, float]] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    flagged_rows: list[dict[str, Any]] = field(default_factory=list)
    flagged_columns: list[str] = field(default_factory=list)
    n_flagged: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)  # the first ones, when there are many
    n_skipped: int | None = None  # how many in all (None: len(skipped))
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (relative path, what it holds)
    config_yaml: str = ""


CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --bg:#f6f7f9; --ok:#2a7a3b; --warn:#a35200; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:18px 32px; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header p { margin:4px 0 0; color:#c9cfdb; }
nav { padding:8px 32px; background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; }
nav a { margin-right:16px; color:#2b5cab; text-decoration:none; font-size:13px; }
main { padding:8px 32px 40px; max-width:1280px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 20px; margin:16px 0; }
h2 { font-size:17px; margin:2px 0 10px; }
.notice { border-left:4px solid #2b5cab; background:#eef3fb; padding:8px 12px; margin:8px 0; border-radius:4px; }
.notice.ok { border-color:var(--ok); background:#edf7ef; }
.notice.warn { border-color:var(--warn); background:#fdf3e7; }
table { border-collapse:collapse; font-size:13px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f0f2f6; font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:16px; }
figure { margin:0; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; background:#fff; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:4px; }
.muted { color:var(--muted); }
.pill { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; }
.pill.p { background:#fbe3e1; color:var(--bad); } .pill.c { background:#e6f4e8; color:var(--ok); }
pre { background:#f3f4f7; padding:10px; border-radius:6px; overflow:auto; font-size:12px; }
code { font-size:12.5px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers to 3 significant decimals, NaN as an en dash, everything else as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "\u2013"
        if value.is_integer() and abs(value) < 1e9:
            return f"{int(value):,}"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table>"]
    if header:
        out += ["<thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>")
        for v in row:
            num = (isinstance(v, (int, float)) and not isinstance(v, bool)) or isinstance(v, _RawNum)
            text = v if isinstance(v, _Raw) else esc(fmt(v))
            out.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class _Raw(str):
    """Already-escaped HTML for a table cell."""


class _RawNum(_Raw):
    """Already-formatted number for a table cell (right-aligned)."""


METRIC_COLUMNS = [("n_flagged", "flagged"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
                  ("fpr", "FPR"), ("auroc", "AUROC"), ("auprc", "AUPRC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"),
                  ("top20_precision", "precision@20"), ("toptrue_precision", "precision@#poisons")]


def render_html(c: ReportContent) -> str:
    """The report page as one string (UTF-8, no external resources)."""
    parts: list[str] = []
    nav = [("summary", "Summary")]
    if c.metrics:
        nav.append(("metrics", "Detection"))
    if c.backdoor:
        nav.append(("backdoor", "Backdoor check"))
    inline = {"backdoor"}  # figures shown inside a section of their own above
    nav += [(f.id, f.title) for f in c.figures if f.id not in inline]
    nav += [("flagged", "Flagged images"), ("skipped", "Skipped files"), ("outputs", "Files")]

    parts.append('<section id="summary"><h2>Summary</h2>')
    for n in c.notices:
        parts.append(f'<div class="notice {esc(n.level)}">{esc(n.text)}</div>')
    parts.append(_table(None, [(_Raw(f"<b>{esc(k)}</b>"), v) for k, v in c.summary]))
    parts.append("</section>")

    if c.metrics:
        per_attack = sorted({k for m in c.metrics.values() for k in m if k.startswith("recall_")})
        columns = METRIC_COLUMNS + [(k, "recall on " + k.removeprefix("recall_")) for k in per_attack]
        rows = [[name] + [m.get(key, float("nan")) for key, _ in columns] for name, m in c.metrics.items()]
        parts.append('<section id="metrics"><h2>Detection against the ground truth</h2>')
        parts.append(_table(["detector"] + [label for _, label in columns], rows))
        parts.append('<p class="muted">precision/recall/F1/FPR are of each detector\'s own flags; AUROC and '
                     "precision@#poisons rank its scores (the latter: share of true poisons among the top "
                     "<i>n</i>, <i>n</i> = number of poisons). <i>fused</i>: the combined flags that decided the "
                     "clean manifest.</p></section>")

    if c.backdoor:
        keys = list(dict.fromkeys(k for v in c.backdoor.values() for k in v))  # first row's order
        parts.append('<section id="backdoor"><h2>Backdoor check</h2>')
        parts.append(_table(["encoder"] + keys, [[name] + [v.get(k, float("nan")) for k in keys] for name, v in c.backdoor.items()]))
        parts.append('<p class="muted"><i>triggered</i>: share of triggered test images (not of the target class) '
                     "that a kNN classifier on the encoder\u2019s features assigns to the target class; "
                     "<i>random_patch</i>: the same with a random patch of the same size. A backdoor is learned "
                     "when the first is clearly above the second. The kNN bank is the unpoisoned corpus; the "
                     "<i>_corpus_bank</i> pair uses the corpus with its poisons: when only that pair differs, "
                     "the encoder gathered triggered images with the poisons, in a group of their own.</p>")
        for f in c.figures:
            if f.id == "backdoor":
                parts.append(f"<figure>{img_tag(f.png, f.title)}<figcaption>{esc(f.caption)}</figcaption></figure>")
        parts.append("</section>")

    for f in c.figures:
        if f.id in inline:
            continue
        parts.append(f'<section id="{esc(f.id)}"><h2>{esc(f.title)}</h2><figure>{img_tag(f.png, f.title)}')
        if f.caption:
            parts.append(f"<figcaption>{esc(f.caption)}</figcaption>")
        parts.append("</figure></section>")

    parts.append(f'<section id="flagged"><h2>Flagged images ({c.n_flagged:,})</h2>')
    if c.flagged_rows:
        rows = []
        for r in c.flagged_rows:
            row = []
            for col in c.flagged_columns:
                v = r.get(col, "")
                if col == "poisoned" and v != "":
                    v = _Raw('<span class="pill p">poisoned</span>' if v else '<span class="pill c">clean</span>')
                elif col == "index":
                    v = _RawNum(esc(str(v)))  # an identifier: no thousands separator
                elif isinstance(v, float):
                    v = _RawNum(f"{v:.4g}" if math.isfinite(v) else esc(str(v)))
                row.append(v)
            rows.append(row)
        parts.append(_table(c.flagged_columns, rows))
        if c.n_flagged > len(c.flagged_rows):
            parts.append(f'<p class="muted">{len(c.flagged_rows)} of {c.n_flagged:,} shown, highest fused score first; '
                         "all are in flagged.txt and scores.csv.</p>")
    else:
        parts.append('<p class="muted">No image was flagged.</p>')
    parts.append("</section>")

    n_skipped = len(c.skipped) if c.n_skipped is None else c.n_skipped
    parts.append(f'<section id="skipped"><h2>Skipped input files ({n_skipped:,})</h2>')
    if c.skipped:
        parts.append(_table(["file", "reason"], [(s.path, s.reason) for s in c.skipped]))
        if n_skipped > len(c.skipped):
            parts.append(f'<p class="muted">{len(c.skipped)} of {n_skipped:,} shown; summary.json counts them all and '
                         "dataset.json lists them all.</p>")
    else:
        parts.append('<p class="muted">Every input file was read.</p>')
    parts.append("</section>")

    parts.append('<section id="outputs"><h2>Files of this run</h2>')
    parts.append(_table(["file", "holds"], [(_Raw(f'<a href="{esc(p)}">{esc(p)}</a>'), what) for p, what in c.outputs]))
    if c.config_yaml:
        parts.append(f"<details><summary>Resolved configuration</summary><pre>{esc(c.config_yaml)}</pre></details>")
    parts.append("</section>")

    nav_html = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(c.title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(c.title)}</h1><p>{esc(c.subtitle)}</p></header>"
        f"<nav>{nav_html}</nav><main>{''.join(parts)}</main></body></html>\n"
    )
