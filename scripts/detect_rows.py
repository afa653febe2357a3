"""Metric rows from the per-detector files of a detect-benchmark run stopped before its table.

``benchmarks.detect.run_detect_benchmark`` writes ``<detector>_scores.csv`` and ``_info.json`` per
detector as it goes, but its table only at the end of a setting; on a slow CPU (a ResNet-18 encoder) a run
may be stopped before that. This recomputes the rows with the benchmark's own metric code against the
same seeded poisoning:

    python scripts/detect_rows.py htba12_50:/tmp/gb2/htba12_50/htba12_50/seed0:0:10 --n-per-class 200

Each argument is ``setting:folder:detector_seed:k``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package sits at the repository root
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from benchmarks.detect import poisoned_cifar10
    from sslguard.metrics import detection_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="setting:folder:detector_seed:k")
    ap.add_argument("--n-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="poisoning seed of the run")
    args = ap.parse_args(argv)
    print("| setting | n | poisons | k | detector | seed | precision | recall | F1 | AUROC | top10 | top50 | top100 "
          "| top@poisons | detect wall s | confirmation (PoisonCAM: cluster: robust z, paste rate) |")
    print("|" + "---|" * 16)
    for run in args.runs:
        setting, folder, dseed, k = run.split(":")
        ds, man = poisoned_cifar10(setting, n_per_class=args.n_per_class, seed=args.seed)
        for det in ("poisoncam", "patchsearch"):
            f = Path(folder) / f"{det}_scores.csv"
            if not f.exists():
                continue
            rows = list(csv.DictReader(open(f)))
            keys = np.array([int(r["index"]) for r in rows])
            truth = man.is_poisoned(keys)
            m = detection_metrics(np.array([float(r["score"]) for r in rows]),
                                  np.array([r["flagged"] in ("True", "true", "1") for r in rows]), truth)
            info = json.loads((Path(folder) / f"{det}_info.json").read_text())
            conf = "-"
            if det == "poisoncam":
                st = info["cluster_stats"]
                conf = "; ".join(f"{c}: {v['robust_z']:.2f}, {v['paste_rate']:.3f}" for c, v in st.items()
                                 if v.get("paste_rate") is not None) or "none checked (max z %.2f)" % max(
                    v["robust_z"] for v in st.values())
                conf = f"confirmed {info['confirmed_clusters']}; {conf}"
            print(f"| {setting} | {len(keys)} | {int(truth.sum())} | {k} | {det} | {dseed} | {m['precision']:.3f} "
                  f"| {m['recall']:.3f} | {m['f1']:.3f} | {m['auroc']:.3f} | {m['top10_precision']:.2f} "
                  f"| {m['top50_precision']:.2f} | {m['top100_precision']:.2f} | {m['toptrue_precision']:.3f} "
                  f"| {info['timings']['total_s']:.0f} | {conf} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
