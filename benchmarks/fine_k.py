"""PoisonCAM and PatchSearch at k far above the natural groups: does a trigger group cut into several
clusters still get found, and what does each k cost? Writes ``benchmarks/fine_k.md`` and ``fine_k.json``.

    python benchmarks/fine_k.py            # planted case, seeds 0 and 1: k = 15 50 100 200; group_k sweep at k = 30 50 100
    python benchmarks/fine_k.py --seeds 0 --ks 15 50 --out /tmp/fine_k.md

The case is :func:`sslguard.testing.planted_patch_encoder_case` (1,438 digits at 32 px, 73 HTBA poisons
on half of class 3, an encoder that certainly learned the trigger), clustered at each k with k-means seed 0.
Each detector runs twice in the same process, side by side:

- *groups* (the defaults): a paste into a cluster counts when it lands in the cluster, its twin or one of
  its ``ceil(k / 10) - 1`` nearest clusters; PoisonCAM's probes share a budget of 640 searches (at least 4
  per cluster); PatchSearch's test set stays at 320 images and a round scores at most 160 windows.
- *pairs* (the detectors before this change, as far as parameters restore them): twins only
  (``group_k=None``), 32 probes in every cluster, 16 test images of every cluster, 8 windows of every
  cluster per round. PatchSearch's pairs run is skipped above ``--pairs-max-k`` (its flip test grows with
  k squared: 750 s at k=100 on this case).

Before them, a sweep of ``group_k`` (20, 10, 5): every cluster's paste rate, trigger pieces and clean
clusters apart. Both on one torch thread. *Pieces*: clusters holding poisons (all pure at these k).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))

PAIRS = {"poisoncam": {"group_k": None, "probe_budget": 10**9},
         "patchsearch": {"group_k": None, "test_size": 10**9, "round_windows": 10**9}}
# the planted tests' sample sizes for the parts that do not depend on k
COMMON = {"poisoncam": {"n_null": 48, "classifier_images": 300, "classifier_epochs": 3},
          "patchsearch": {"classifier_images": 300, "classifier_epochs": 3}}


def run_case(seed: int, k: int, pairs_max_k: int) -> list[dict]:
    import numpy as np

    from sslguard.detectors import get_detector
    from sslguard.metrics import detection_metrics
    from sslguard.testing import embed_and_cluster, planted_patch_encoder_case

    c = planted_patch_encoder_case(seed=seed)
    emb, cl = embed_and_cluster(c.backbone, c.dataset, k=k)
    pieces = [int(t) for t in np.unique(cl.assignments[c.truth])]
    rows = []
    for det in ("poisoncam", "patchsearch"):
        for variant in ("groups", "pairs"):
            if variant == "pairs" and det == "patchsearch" and k > pairs_max_k:
                continue
            kw = {**COMMON[det], **(PAIRS[det] if variant == "pairs" else {})}
            t = time.perf_counter()
            r = get_detector(det)(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=cl, seed=0, **kw)
            dt = time.perf_counter() - t
            m = detection_metrics(r.scores, r.flagged, c.truth)
            row = {"seed": seed, "k": k, "detector": det, "variant": variant, "pieces": len(pieces),
                   "flagged": int(r.flagged.sum()), "precision": m["precision"], "recall": m["recall"],
                   "auroc": m["auroc"], "seconds": dt, "ms_per_image": 1000 * dt / len(c.dataset)}
            if det == "poisoncam":
                stats = r.info["cluster_stats"]
                clean = [s["paste_rate"] for q, s in stats.items() if q not in pieces and "paste_rate" in s]
                trig = [s["paste_rate"] for q, s in stats.items() if q in pieces and "paste_rate" in s]
                row.update(confirmed=f"{len(set(r.info['confirmed_clusters']) & set(pieces))}/{len(pieces)}",
                           false_confirmed=len(set(r.info["confirmed_clusters"]) - set(pieces)),
                           min_trigger_rate=min(trig) if trig else None, max_clean_rate=max(clean) if clean else None)
            else:
                row.update(final_in_trigger=bool(r.info["final_cluster"][0] in pieces),
                           pull=r.info["top_window_pull_rate"], test_size=r.info["test_size"],
                           n_scored=r.info["n_scored"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def group_sweep(seed: int, k: int, group_ks: list[int]) -> list[dict]:
    """PoisonCAM's paste rate of every cluster at each ``group_k`` (the paste check only: ``paste_rate`` above 1
    records every cluster's rate and confirms none, no classifier)."""
    import numpy as np

    from sslguard.detectors import get_detector
    from sslguard.testing import embed_and_cluster, planted_patch_encoder_case

    c = planted_patch_encoder_case(seed=seed)
    emb, cl = embed_and_cluster(c.backbone, c.dataset, k=k)
    pieces = set(np.unique(cl.assignments[c.truth]).tolist())
    rows = []
    for gk in group_ks:
        r = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=cl, seed=0,
                                      group_k=gk, paste_rate=2.0, classifier=False, n_null=16)
        st = r.info["cluster_stats"]
        trig = [s["paste_rate"] for q, s in st.items() if q in pieces and "paste_rate" in s]
        clean = sorted(s["paste_rate"] for q, s in st.items() if q not in pieces and "paste_rate" in s)
        row = {"seed": seed, "k": k, "group_k": gk, "pieces": len(pieces), "min_trigger_rate": min(trig),
               "max_clean_rate": clean[-1], "clean_over_0_3": int(sum(v >= 0.3 for v in clean))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _f(v, nd=2):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


# (header, cell) per column of each detector's table; the first four and the last six are shared
_HEAD = [("seed", lambda r: r["seed"]), ("k", lambda r: r["k"]), ("pieces", lambda r: r["pieces"]),
         ("variant", lambda r: r["variant"])]
_TAIL = [("flagged", lambda r: r["flagged"]), ("P", lambda r: _f(r["precision"])), ("R", lambda r: _f(r["recall"])),
         ("AUROC", lambda r: _f(r["auroc"], 3)), ("s", lambda r: f"{r['seconds']:.1f}"),
         ("ms/image", lambda r: f"{r['ms_per_image']:.1f}")]
PC_COLUMNS = [*_HEAD, ("confirmed pieces", lambda r: r["confirmed"]), ("false confirmed", lambda r: r["false_confirmed"]),
              ("min trigger paste rate", lambda r: _f(r["min_trigger_rate"])),
              ("max clean paste rate", lambda r: _f(r["max_clean_rate"])), *_TAIL]
PS_COLUMNS = [*_HEAD, ("search ends in a piece", lambda r: r["final_in_trigger"]), ("top-window pull", lambda r: _f(r["pull"])),
              ("test images", lambda r: r["test_size"]), ("windows scored", lambda r: r["n_scored"]), *_TAIL]


def _table(rows: list[dict], detector: str, columns: list) -> list[str]:
    """A markdown table of ``detector``'s rows: text columns left-aligned, numbers right."""
    align = ["---" if h in ("seed", "variant", "search ends in a piece") else "---:" for h, _ in columns]
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join(align) + "|"]
    return out + ["| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows if r["detector"] == detector]


def markdown(rows: list[dict], argv: list[str], sweep: list[dict] | None = None) -> str:
    import torch

    lines = ["# PoisonCAM and PatchSearch at fine k (a trigger group cut into pieces)", "",
             f"Written by `python benchmarks/fine_k.py {' '.join(argv)}`".rstrip() + f" on {time.strftime('%Y-%m-%d')}; "
             f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}.", "",
             "The planted case (`sslguard.testing.planted_patch_encoder_case`: 1,438 digits, 73 HTBA poisons) at",
             "each k. *groups*: the defaults (a paste arrival counts in the cluster's twin and its `ceil(k/10)-1`",
             "nearest clusters; PoisonCAM's probe budget 640, PatchSearch's test set 320 and 160 windows per round).",
             "*pairs*: twins only and the per-cluster sample sizes of before (32 probes, 16 test images and 8",
             "windows per round in every cluster). *pieces*: clusters holding poisons (pure at every k here).", "",
             "## PoisonCAM", "", *_table(rows, "poisoncam", PC_COLUMNS), "", "## PatchSearch", "",
             *_table(rows, "patchsearch", PS_COLUMNS)]
    if sweep:
        lines += ["", "## group_k sweep (PoisonCAM's paste check)", "",
                  "Every cluster's paste rate (8 probe windows on 32 images from outside the cluster's group) with",
                  "groups of `ceil(k / group_k)` clusters. The bar that confirms a cluster is 0.5.", "",
                  "| seed | k | pieces | group_k | lowest trigger piece rate | highest clean rate | clean clusters >= 0.3 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['seed']} | {r['k']} | {r['pieces']} | {r['group_k']} | {r['min_trigger_rate']:.2f} | "
                  f"{r['max_clean_rate']:.2f} | {r['clean_over_0_3']} |" for r in sweep]
    lines += ["", "PoisonCAM's flags can stay right with pairs even when it confirms a single piece: its poison",
              "classifier, trained on that piece's trigger windows, finds the poisons of the other pieces. What",
              "pairs lose first is the confirmation, then (PatchSearch) the evidence bar: the top windows' pull",
              "into one piece falls toward 1 / pieces.", "",
              "Times are wall seconds on a shared 2-core machine: read them side by side within one k (the two",
              "variants ran back to back), not across runs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ks", type=int, nargs="+", default=[15, 50, 100, 200])
    ap.add_argument("--pairs-max-k", type=int, default=50)
    ap.add_argument("--sweep-ks", type=int, nargs="*", default=[30, 50, 100])
    ap.add_argument("--group-ks", type=int, nargs="+", default=[20, 10, 5])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fine_k.md")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sweep = [r for seed in a.seeds for k in a.sweep_ks for r in group_sweep(seed, k, a.group_ks)]
    rows = [r for seed in a.seeds for k in a.ks for r in run_case(seed, k, a.pairs_max_k)]
    a.out.write_text(markdown(rows, argv, sweep))
    a.out.with_suffix(".json").write_text(json.dumps({"runs": rows, "group_k_sweep": sweep}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
