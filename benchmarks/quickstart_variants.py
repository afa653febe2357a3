"""The README's quickstart with another target class or another HTBA trigger (held out: never tuned on).
Writes ``benchmarks/quickstart_variants.md`` and ``quickstart_variants.json``.

    python benchmarks/quickstart_variants.py                     # the six variants below, about 1 min each
    python benchmarks/quickstart_variants.py --variants attack.target=4 attack.seed=5,attack.target=2

Each variant is ``sslguard detect`` with the quickstart config, the classifier stage left out (as the
quickstart row of ``generalization.md``) and the overrides named; ``attack.seed`` draws another HTBA trigger
pattern. BadNets poisons (the extra attack) are left out of the scoring. *Learned?* is the pipeline's check,
read as ``generalization.md`` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))

VARIANTS = ["attack.target=3", "attack.target=5", "attack.target=8", "attack.seed=1", "attack.seed=2",
            "attack.target=6,attack.seed=3"]


def run_variant(overrides: list[str], output_dir: str, threads: int) -> dict:
    from benchmarks.generalization import _learned
    from sslguard.metrics import detection_metrics
    from sslguard.pipeline import Pipeline, load_detect_config

    name = "qv_" + "_".join(o.split(".")[-1].replace("=", "") for o in overrides)
    cfg = load_detect_config("quickstart", [*overrides, f"output_dir={output_dir}", f"name={name}",
                                            f"threads={threads}", "detectors.classifier=[]",
                                            "fusion.detectors=[poisoncam, patchsearch]"])
    t = time.perf_counter()
    pipe = Pipeline(cfg, quiet=True)
    res = pipe.run()
    data = pipe.stage_data()
    htba = data.manifests[0].is_poisoned(data.keys)
    keep = ~(data.truth & ~htba)  # BadNets poisons: not scored either way
    assign = np.load(res.paths["clusters.npz"])["assignments"]
    row = {"overrides": overrides, "seconds": time.perf_counter() - t, "poisons": int(htba.sum()),
           "learned": _learned(res.summary.get("backdoor"), cfg.backdoor_margin)["verdict"],
           "best_cluster": max([int((htba & (assign == c)).sum()), int((assign == c).sum())] for c in np.unique(assign))}
    for n, r in {**res.detections, "fused": res.fused}.items():
        if n in ("poisoncam", "patchsearch", "fused"):
            m = detection_metrics(r.scores[keep], r.flagged[keep], htba[keep])
            row[n] = {"flagged": int(r.flagged[keep].sum()), "precision": m["precision"], "recall": m["recall"],
                      "auroc": m["auroc"], "evidence": str(r.info.get("evidence", ""))}
    return row


def markdown(rows: list[dict], argv: list[str]) -> str:
    import torch

    from benchmarks.scale import machine

    m = machine()
    out = ["# The quickstart with another target class or trigger (held out)", "",
           f"Written by `python benchmarks/quickstart_variants.py {' '.join(argv)}`".rstrip() + f" on "
           f"{time.strftime('%Y-%m-%d')}; {m['cpu']}, {m['logical_cpus']} cores, torch {torch.__version__}. The README's quickstart (1,438 digits, SimCLR convnet4, "
           "k=20) with the overrides named; the classifier stage left out, BadNets poisons not scored.", "",
           "| overrides | learned? | best cluster (HTBA / members) | PoisonCAM flags, P / R / AUROC "
           "| PatchSearch flags, P / R / AUROC | fused flags, P / R | wall s |",
           "|---|---|---|---|---|---|---:|"]
    for r in rows:
        pc, ps, fu = r["poisoncam"], r["patchsearch"], r["fused"]
        out.append(f"| {' '.join(r['overrides'])} | {r['learned']} | {r['best_cluster'][0]} / {r['best_cluster'][1]} "
                   f"| {pc['flagged']}, {pc['precision']:.3f} / {pc['recall']:.3f} / {pc['auroc']:.3f} "
                   f"| {ps['flagged']}, {ps['precision']:.3f} / {ps['recall']:.3f} / {ps['auroc']:.3f} "
                   f"| {fu['flagged']}, {fu['precision']:.3f} / {fu['recall']:.3f} | {r['seconds']:.0f} |")
    out += ["", "Evidence, per variant:", ""]
    for r in rows:
        out.append(f"- **{' '.join(r['overrides'])}**: PoisonCAM: {r['poisoncam']['evidence']}; "
                   f"PatchSearch: {r['patchsearch']['evidence']}")
    notes = Path(__file__).with_name("quickstart_variants_notes.md")
    if notes.exists():  # what the numbers show, written by hand after a run (kept across reruns)
        out += ["", notes.read_text().rstrip()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=VARIANTS, help="comma-separated overrides per variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output-dir", default="/tmp/sslguard_quickstart_variants")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quickstart_variants.md")
    ap.add_argument("--rows-from", type=Path, help="a quickstart_variants.json whose rows are rewritten, none run")
    a = ap.parse_args(argv)
    rows = json.loads(a.rows_from.read_text()) if a.rows_from else []
    a.variants = [] if a.rows_from else a.variants
    for v in a.variants:
        rows.append(run_variant(v.split(","), a.output_dir, a.threads))
        print(json.dumps(rows[-1], default=float), flush=True)
    a.out.write_text(markdown(rows, argv))
    a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
