"""The margins behind the planted cases and the detector decisions that must not flip with float noise.

Prints and writes ``benchmarks/margins.md``: for each planted case and seed, the quantity a detector's
decision reads and how far it is from its cut, under whatever oneDNN kernels this process gets (run it
again with ``ONEDNN_MAX_CPU_ISA=SSE41 DNNL_MAX_CPU_ISA=SSE41`` to see another CPU's float order).

    python benchmarks/margins.py [--seeds 0 1 2] [--out benchmarks/margins.md] [--mnist ../shared/data/mnist-test]

About 5 minutes on one core. Sections:

1. planted encoder (``sslguard.testing.planted_patch_encoder_case``): are the poisons in clusters of
   their own at k = 10, 12, 15, and PoisonCAM's paste rates (trigger clusters vs the highest clean one)
   at ``PLANTED_ENCODER_K``;
2. planted classifier (``planted_badnets_classifier_case``): ASR / clean accuracy; spectral's class z of
   the target with and without the trusted reference; activation clustering's poison-cluster share
   with PCA and with whitened ("ica") reduction (the poisons' true share of the class is the bar);
3. MNIST with a shifted trusted set (``mnist_badnets_classifier_case``, when the files are there): per
   detector, the poison cluster's and the clean classes' trusted-image ratio (reference share of the
   suspect cluster / its share of the class); the tolerance cut is 0.25.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sslguard.detectors import get_detector  # noqa: E402
from sslguard.testing import (PLANTED_ENCODER_K, embed_and_cluster, mnist_badnets_classifier_case,  # noqa: E402
                              planted_badnets_classifier_case, planted_patch_encoder_case)


def encoder_rows(seeds):
    rows = []
    for seed in seeds:
        c = planted_patch_encoder_case(seed=seed)
        purity = []
        for k in (10, 12, PLANTED_ENCODER_K):
            emb, cl = embed_and_cluster(c.backbone, c.dataset, k)
            holding = np.unique(cl.assignments[c.truth])
            pure = all(c.truth[cl.assignments == t].mean() > 0.95 for t in holding)
            purity.append(f"{'pure' if pure else 'MERGED'} ({len(holding)})")
        r = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=cl, n_probe=8,
                                      n_null=16, classifier=False, confirm_z=1e3, seed=0)
        rates = {int(k): v["paste_rate"] for k, v in r.info["cluster_stats"].items()}
        trig = [rates[int(t)] for t in holding if int(t) in rates]
        clean = [v for k, v in rates.items() if k not in set(holding.tolist())]
        rows.append([seed, *purity, " / ".join(f"{v:.2f}" for v in trig), f"{max(clean):.2f}", r.info["confirmed_clusters"]])
    return rows


def classifier_rows(seeds):
    rows = []
    for seed in seeds:
        c = planted_badnets_classifier_case(rate=0.3, rate_of="target", seed=seed)
        share = float(c.truth[c.train.labels == c.attack.target].mean())
        t = str(c.attack.target)
        z = []
        for ref in (None, c.test):
            r = get_detector("spectral")(c.model, c.train, expected_rate=share, reference=ref)
            others = max(v["class_z"] for k, v in r.info["per_class"].items() if k != t)
            z.append(f"{r.info['per_class'][t]['class_z']:.1f} / {others:.1f}")
        split = []
        for reduce in ("pca", "ica"):
            r = get_detector("activation_clustering")(c.model, c.train, reduce=reduce, reference=c.test)
            split.append(f"{r.info['per_class'][t]['poison_cluster_share']:.2f}")
        rows.append([seed, f"{c.metrics['asr']:.3f}", f"{c.metrics['clean_acc']:.3f}", *z, f"{share:.2f}", *split])
    return rows


def mnist_rows(root):
    c = mnist_badnets_classifier_case(str(root), split="ordered")
    rows = []
    for name in ("activation_clustering", "heatmap_clustering"):
        for tol in (0.25, 1.0):
            r = get_detector(name)(c.model, c.train, reference=c.test, reference_tolerance=tol)
            per = r.info["per_class"]
            ratio = {k: v["reference_share"] / v["poison_cluster_share"] for k, v in per.items() if v.get("analysed")}
            t = str(c.attack.target)
            clean = min(v for k, v in ratio.items() if k != t)
            rows.append([name, tol, f"{ratio[t]:.2f}", f"{clean:.2f}", r.info["flagged_classes"]])
    return rows, c.metrics


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(Path(__file__).with_name("margins.md")))
    ap.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    parts = [f"# Margins of the planted cases and detector decisions\n\nWritten by `python benchmarks/margins.py "
             f"{' '.join(argv or sys.argv[1:])}`; oneDNN ISA limit: {isa}; torch CPU capability: "
             f"{torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}.\n"]
    parts.append("## 1. Planted encoder: poisons in clusters of their own, PoisonCAM paste rates\n\n" + table(
        ["seed", "k=10", "k=12", f"k={PLANTED_ENCODER_K}", "trigger clusters' paste", "max clean paste", "confirmed"],
        encoder_rows(args.seeds)) + "\n\n(pure/MERGED: every cluster holding poisons is >95% poisons, and how many "
        f"clusters hold them; paste rates at k={PLANTED_ENCODER_K}, the confirmation bar is 0.5. Where the poisons "
        "split over two clusters, one may not pull (its windows are not the trigger's); the other is confirmed and "
        "the poison classifier finds the members of both.)\n")
    print(parts[-1], flush=True)
    parts.append("## 2. Planted classifier: class statistics and the activation split\n\n" + table(
        ["seed", "ASR", "clean acc", "spectral z target / max clean (no ref)", "spectral z (ref)",
         "poison share of class", "AC split share (pca)", "AC split share (ica)"], classifier_rows(args.seeds))
        + "\n\n(spectral's class cut is z 3; the activation split is right when its share equals the poisons'.)\n")
    print(parts[-1], flush=True)
    root = Path(args.mnist)
    if (root / "t10k-images-idx3-ubyte.gz").exists():
        rows, metrics = mnist_rows(root)
        parts.append(f"## 3. MNIST, trusted set = the file's last 2,000 images (other writers)\n\nclassifier: ASR "
                     f"{metrics['asr']:.3f}, clean accuracy {metrics['clean_acc']:.3f}.\n\n" + table(
                         ["detector", "reference_tolerance", "poison cluster ratio", "lowest clean ratio",
                          "flagged classes"], rows) + "\n\n(ratio = trusted images' share of the suspect cluster / "
                     "its share of the class; target class 0.)\n")
        print(parts[-1], flush=True)
    parts.append(f"Total: {time.perf_counter() - t0:.0f} s.\n")
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
