"""Split trigger groups: the quickstart's paste arrivals per cluster, with and without twin counting, on
three oneDNN kernel sets (the float order decides whether k-means splits the trigger group).

    python benchmarks/twins.py                       # native, AVX2 and SSE4.1 kernels -> benchmarks/twins.md
    python benchmarks/twins.py --isa native AVX2 --extra-k --out /tmp/twins.md   # no finer-k rows

Each kernel set runs in its own process (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` when torch loads): the
quickstart runs through the pipeline (as ``sslguard detect`` runs it) with 1 and 2 threads, once with
``twin_clusters`` off and once on for PoisonCAM and PatchSearch (the encoder is cached in
``runs/twins_<isa>_<threads>``, so only the detectors run again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))


def _case(isa: str, threads: int, output_dir: str, twins: bool, k: int = 20) -> dict:
    """The quickstart through the product's path (``sslguard detect``'s pipeline, its seeding and threads),
    with ``twin_clusters`` set for both detectors and ``cluster.k=k``; the encoder is trained once per case
    and cached."""
    import numpy as np

    from sslguard.cluster import ClusterResult
    from sslguard.metrics import detection_metrics
    from sslguard.pipeline import Pipeline, load_detect_config

    cfg = load_detect_config("quickstart", [f"name=twins_{isa}_{threads}", f"output_dir={output_dir}",
                                            f"threads={threads}", f"cluster.k={k}",
                                            f"detectors.params.poisoncam.twin_clusters={twins}",
                                            f"detectors.params.patchsearch.twin_clusters={twins}"])
    result = Pipeline(cfg, quiet=True).run()
    data = Pipeline(cfg, quiet=True).stage_data()
    cl = ClusterResult.load(result.paths["clusters.npz"])
    htba = data.manifests[0].is_poisoned(data.keys)
    badnets = data.truth & ~htba
    trig = [int(c) for c in np.unique(cl.assignments[htba]) if htba[cl.assignments == c].mean() > 0.5]
    pc, ps = result.detections["poisoncam"], result.detections["patchsearch"]
    rates = {int(c): s["paste_rate"] for c, s in pc.info["cluster_stats"].items() if "paste_rate" in s}
    row = {"groups": {c: [int((cl.assignments == c).sum()), int((htba & (cl.assignments == c)).sum())]
                      for c in trig},
           "trigger_rates": [rates.get(c) for c in trig],
           "max_clean_rate": max(v for c, v in rates.items() if c not in trig),
           "confirmed": pc.info["confirmed_clusters"], "patchsearch_pull": ps.info["top_window_pull_rate"]}
    for name, r in (("poisoncam", pc), ("patchsearch", ps)):
        m = detection_metrics(r.scores[~badnets], r.flagged[~badnets], htba[~badnets])
        other = r.flagged & ~badnets
        row[name] = {"flagged": int(r.flagged.sum()), "htba_share": float((other & htba).sum() / max(1, other.sum())),
                     "recall": m["recall"], "auroc": m["auroc"]}
    return row


def _child(isa: str, output_dir: str, extra_k: list[int]) -> dict:
    out = {"isa": isa, "cases": {threads: {"single": _case(isa, threads, output_dir, False),
                                           "twins": _case(isa, threads, output_dir, True)} for threads in (1, 2)}}
    # finer clusterings of the same encoders (twins counted): does a larger k avoid the merge?
    out["finer_k"] = {k: {threads: _case(isa, threads, output_dir, True, k) for threads in (1, 2)} for k in extra_k}
    return out


def _machine() -> str:
    """The CPU (:func:`benchmarks.scale.machine`), core count, torch's version and the date: float orders differ
    by CPU."""
    import time

    import torch

    from benchmarks.scale import machine

    m = machine()
    return f"{m['cpu']}, {m['logical_cpus']} cores; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"


def _markdown(rows: list[dict], argv: list[str] | None = None) -> str:
    command = " ".join(["python benchmarks/twins.py", *(argv or [])])
    lines = ["# Split trigger groups: paste arrivals counted for a cluster and its twin", "",
             f"Machine: {_machine()}.", "",
             f"Written by `{command}`: the README's quickstart (1,438 digits, 71 HTBA + 40 BadNets",
             "poisons, SimCLR convnet4, `cluster.k=20`) run through the pipeline on three oneDNN kernel sets and",
             "with 1 or 2 threads (the quickstart config sets 1): six float orders, so six encoders and clusterings.",
             "*Groups*: the clusters holding most HTBA poisons (id: size/HTBA). *Rate*: the share of pasted images (a",
             "cluster's top probe windows on 32 non-members) the cluster model sends into the cluster (single) or",
             "into the cluster or its mutual-nearest twin (twins, the default). Recall and AUROC: HTBA poisons",
             "against clean images; *HTBA share*: of the flags that are not BadNets poisons, the share that are HTBA.",
             "", "| kernels | threads | groups (size/HTBA) | counting | trigger rates | max clean rate | PoisonCAM "
             "flags / HTBA share | PoisonCAM recall / AUROC | PatchSearch pull | PatchSearch flags / HTBA share | "
             "PatchSearch recall / AUROC |", "|" + "---|" * 11]
    for r in rows:
        for threads, case in r["cases"].items():
            for key in ("single", "twins"):
                x = case[key]
                groups = ", ".join(f"{c}: {n}/{h}" for c, (n, h) in x["groups"].items())
                rates = ", ".join("-" if v is None else f"{v:.2f}" for v in x["trigger_rates"])
                pc, ps = x["poisoncam"], x["patchsearch"]
                lines.append(f"| {r['isa']} | {threads} | {groups} | {key} | {rates} | {x['max_clean_rate']:.2f} | "
                             f"{pc['flagged']} / {pc['htba_share']:.2f} | {pc['recall']:.3f} / {pc['auroc']:.3f} | "
                             f"{x['patchsearch_pull']:.2f} | {ps['flagged']} / {ps['htba_share']:.2f} | "
                             f"{ps['recall']:.3f} / {ps['auroc']:.3f} |")
    lines += ["", "## Finer k (twins counted)", "",
              "The same encoders clustered finer. A larger k can separate a merged trigger group, and it splits",
              "groups into more parts; twin pairs join two parts, not three or more.", "",
              "| kernels | threads | k | groups (size/HTBA) | trigger rates | max clean rate | PoisonCAM flags / HTBA "
              "share | PoisonCAM recall / AUROC | PatchSearch pull | PatchSearch recall / AUROC |", "|" + "---|" * 10]
    for r in rows:
        for k, per in r.get("finer_k", {}).items():
            for threads, x in per.items():
                groups = ", ".join(f"{c}: {n}/{h}" for c, (n, h) in x["groups"].items())
                rates = ", ".join("-" if v is None else f"{v:.2f}" for v in x["trigger_rates"])
                pc, ps = x["poisoncam"], x["patchsearch"]
                lines.append(f"| {r['isa']} | {threads} | {k} | {groups} | {rates} | {x['max_clean_rate']:.2f} | "
                             f"{pc['flagged']} / {pc['htba_share']:.2f} | {pc['recall']:.3f} / {pc['auroc']:.3f} | "
                             f"{x['patchsearch_pull']:.2f} | {ps['recall']:.3f} / {ps['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", nargs="+", default=["native", "AVX2", "SSE41"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "twins.md"))
    ap.add_argument("--output-dir", default="runs")
    ap.add_argument("--extra-k", nargs="*", type=int, default=[30, 40], help="finer k values run with twins counted")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.output_dir, args.extra_k)))
        return 0
    rows = []
    for isa in args.isa:
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        if isa != "native":
            env.update(ONEDNN_MAX_CPU_ISA=isa, DNNL_MAX_CPU_ISA=isa)
        proc = subprocess.run([sys.executable, __file__, "--child", isa, "--output-dir", args.output_dir, "--extra-k",
                               *map(str, args.extra_k)], env=env,
                              capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(_markdown(rows, sys.argv[1:] if argv is None else argv))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
