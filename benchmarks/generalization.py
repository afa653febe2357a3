"""SSL-stage detection beyond the setting it was tuned on: every SSL detector and the fused flags on every case.
Writes ``benchmarks/generalization.md`` and ``generalization.json``.

    python scripts/benchmark.py generalization                     # every case; trains the encoders not committed
    python scripts/benchmark.py generalization --cases quickstart planted glyph12_50_t3
    python scripts/benchmark.py generalization --rows-from /tmp/a.json  # one table from earlier runs' rows

Each CIFAR-10 case is one ``sslguard detect`` run (the pipeline, in this process) on 10,000 training images
(1,000 per class) with one attack injected: BYOL convnet4 (width 16), 39 epochs, SGD, crop scale (0.2, 1), as
``benchmarks/detect.md``'s CPU encoders (the only CPU recipe that learned a 12 px trigger there), then
``cluster.k: auto`` (100 at 10k images) and PoisonCAM, PatchSearch and density on the same clusters, fused
as the quickstart fuses them (PoisonCAM and PatchSearch vote, ``agree``; the planted row, which calls
:func:`~sslguard.pipeline.fusion.fuse` itself, ``any``). The trained encoder is copied to
``benchmarks/encoders/cpu/<case>.safetensors`` with its recipe and sha256, and a later run loads it instead
of training (about 15-20 min each on one core).

The two ``gpu_`` rows load the reference encoders of ``encoders/README.md`` (BYOL CIFAR ResNet-18 trained on
a lent GPU on all 50,000 training images with HTBA on half of class 0: 12 px, learned; 8 px, the papers'
size, partly learned) and run detection on 2,000 of those images (200 per class, poisoned by the pipeline with
the same attack), as ``detect.md`` does: a ResNet-18 runs at about 50 img/s on this CPU.

The Imagenette row is the same recipe on ``../shared``'s Imagenette folder (its 3,925 validation photos at
64 px, a 16 px grid on half of class 0, k=40); a folder has no labelled test split, so the learned check holds
clean corpus images out of the kNN bank.

The quickstart row is the README's command with the classifier stage left out, so that its fused flags are
the SSL stage's (PoisonCAM and PatchSearch, as in every other row); its BadNets poisons (the extra attack,
for the classifier stage) are left out of the scoring, as the issue's acceptance counts them. The planted row is the detector tests'
case (``sslguard.testing.planted_patch_encoder_case``: a supervised digits encoder that learned a 10 px
patch), through the detectors and :func:`sslguard.pipeline.fusion.fuse` directly.

*Learned?* is the pipeline's own check (``backdoor.json``): triggered non-target test images sent to the
target by kNN at least ``backdoor_margin`` (0.1) more often than with a random patch (a quarter-side patch for
a global trigger), with the unpoisoned corpus as the kNN bank (what a classifier trained on clean labels
inherits) or, failing that, triggered images sent there at least 0.1 more often than clean ones with the
corpus and its poisons as the bank ("tied to the poisons": the encoder gathers triggered images with the
poisons, in a group of their own, which is what a cluster-based detector needs; "as 'a patch like it'" when
a random patch lands there too). A cluster-based detector can only find a trigger the encoder learned; on a case where it
did not, the bar is the clean one (at most 1% of the corpus flagged).

*Half*: ``tuning`` marks the cases the defaults were chosen on (the quickstart, the planted case, the
12 px grid trigger on class 0 of ``detect.md``, the 16 px logo and glyph cases PoisonCAM's larger window
was designed on, and the noise blend its shared-pattern path was designed on); every other case is held out
(new triggers, classes, sizes, rates, global triggers, photos), and the table shows the two halves separately.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))

TRIGGERS = ROOT / "benchmarks" / "triggers"
ENCODERS = ROOT / "benchmarks" / "encoders" / "cpu"
SSL = ["poisoncam", "patchsearch", "density"]
NAMES = {"poisoncam": "PoisonCAM", "patchsearch": "PatchSearch", "density": "density", "fused": "fused"}
TOP_KS = (5, 10, 20, 50, 100, 500)

# The CPU recipe of detect.md's BYOL encoders, on the quickstart config's stages (no classifier stage).
CIFAR = ["data.name=cifar10", "data.subset_per_class=1000", "data.image_size=32", "extra_attack=null",
         "ssl.method=byol", "ssl.backbone=convnet4", "ssl.width=16", "ssl.epochs=39", "ssl.batch_size=256",
         "ssl.optimizer=sgd", "ssl.min_scale=0.2", "ssl.channels_last=true", "cluster.k=auto", "detectors.classifier=[]",
         "fusion.detectors=[poisoncam, patchsearch]", "detectors.params={}"]

# The same recipe on ../shared's Imagenette folder at 64 px (its val split; the pipeline holds clean corpus
# images out of the kNN bank for the learned check, as for any folder without a labelled test split).
IMAGENETTE = ["data.root=" + str(ROOT.parent / "shared" / "data" / "imagenette2-224"), "data.split=val",
              "data.image_size=64", *[a for a in CIFAR if not a.startswith(("data.", "extra_attack"))],
              "attack.name=htba", "attack.target=0", "attack.rate=0.5", "attack.params={trigger_size: 16}"]


def _patch(kind: str, size: int, rate: float, target: int) -> list[str]:
    params = f"{{trigger_size: {size}" + ("" if kind == "grid" else f", trigger_path: {TRIGGERS / (kind + '.png')}") + "}"
    return [*CIFAR, "attack.name=htba", f"attack.target={target}", f"attack.rate={rate}", f"attack.params={params}"]


def _gpu_encoder(setting: str, size: int) -> list[str]:
    # a reference encoder of encoders/README.md (BYOL CIFAR ResNet-18 trained on a GPU on all 50k images),
    # detection on 200 images per class poisoned the same way (a ResNet-18 runs ~50 img/s on this CPU)
    enc = ROOT / "benchmarks" / "encoders" / f"byol_cifar_resnet18_{setting}_seed0.safetensors"
    args = [a for a in CIFAR if not a.startswith(("data.subset_per_class", "ssl."))]
    return [*args, "data.subset_per_class=200", "ssl.method=byol", "ssl.backbone=cifar_resnet18", "ssl.width=64",
            "attack.name=htba", "attack.target=0", "attack.rate=0.5", f"attack.params={{trigger_size: {size}}}",
            f"encoder={enc}"]


def _global(name: str, params: str, rate: float, target: int) -> list[str]:
    return [*CIFAR, f"attack.name={name}", f"attack.target={target}", f"attack.rate={rate}", f"attack.params={params}"]


# case -> (half, what, config, overrides); "planted" is not a pipeline run (see the module docstring).
CASES: dict[str, tuple[str, str, str, list[str]]] = {
    "quickstart": ("tuning", "digits, HTBA 6 px on 50% of class 0 (the README's command, its SSL stage)", "quickstart",
                   ["detectors.classifier=[]", "fusion.detectors=[poisoncam, patchsearch]"]),
    "planted": ("tuning", "digits, supervised encoder that learned a 10 px HTBA patch on 50% of class 3", "", []),
    "grid12_50_t0": ("tuning", "CIFAR-10, grid 12 px, 50% of class 0 (detect.md's setting)", "quickstart",
                     _patch("grid", 12, 0.5, 0)),
    "glyph12_50_t3": ("held-out", "CIFAR-10, glyph 'K' 12 px, 50% of class 3", "quickstart", _patch("glyph", 12, 0.5, 3)),
    "texture16_50_t5": ("held-out", "CIFAR-10, 1 px checker texture 16 px, 50% of class 5", "quickstart",
                        _patch("texture", 16, 0.5, 5)),
    # logo16 and glyph16_10 were held out until PoisonCAM's step 2b (a larger window) was designed on them
    "logo16_50_t8": ("tuning", "CIFAR-10, smooth gradient logo 16 px, 50% of class 8", "quickstart",
                     _patch("logo", 16, 0.5, 8)),
    "grid10_50_t1": ("held-out", "CIFAR-10, grid 10 px, 50% of class 1", "quickstart", _patch("grid", 10, 0.5, 1)),
    "glyph16_10_t3": ("tuning", "CIFAR-10, glyph 'K' 16 px, 10% of class 3", "quickstart", _patch("glyph", 16, 0.1, 3)),
    "glyph20_50_t6": ("held-out", "CIFAR-10, glyph 'K' 20 px, 50% of class 6 (added after step 2b was designed)",
                      "quickstart", _patch("glyph", 20, 0.5, 6)),
    "logo16_50_t2": ("held-out", "CIFAR-10, smooth gradient logo 16 px, 50% of class 2 (added after step 2b was designed)",
                     "quickstart", _patch("logo", 16, 0.5, 2)),
    # blend30 was held out until PoisonCAM's shared-pattern path (detectors/global_trigger.py) was designed on it
    "blend30_50_t0": ("tuning", "CIFAR-10, blend (noise, alpha 0.3), 50% of class 0", "quickstart",
                      _global("blend", "{alpha: 0.3}", 0.5, 0)),
    # defined before PoisonCAM's shared-pattern check was written on blend30 (which it moved to the tuning half)
    "blend30s7_50_t7": ("held-out", "CIFAR-10, blend (another noise pattern, seed 7, alpha 0.3), 50% of class 7",
                        "quickstart", _global("blend", "{alpha: 0.3, trigger_seed: 7}", 0.5, 7)),
    # defined (2026-12-01) after the shared-pattern path and before its encoder was trained or looked at
    "blend20s11_50_t4": ("held-out", "CIFAR-10, blend (a third noise pattern, seed 11, alpha 0.2), 50% of class 4",
                         "quickstart", _global("blend", "{alpha: 0.2, trigger_seed: 11}", 0.5, 4)),
    "sig40_50_t0": ("held-out", "CIFAR-10, SIG (delta 40, 6 periods), 50% of class 0", "quickstart",
                    _global("sig", "{delta: 40.0}", 0.5, 0)),
    # defined (2026-12-02) before its encoder was trained: CTRL's frequency trigger at 3x the paper's magnitude
    # (at 50 the CPU recipe did not learn it, detect.md)
    "ctrl150_50_t9": ("held-out", "CIFAR-10, CTRL (chroma DCT, magnitude 150: 3x the paper's), 50% of class 9",
                      "quickstart", _global("ctrl", "{magnitude: 150.0}", 0.5, 9)),
    "gpu_htba12_50_t0": ("held-out", "CIFAR-10, grid 12 px, 50% of class 0; the GPU reference encoder (ResNet-18, "
                         "all 50k images, 33 epochs), detection on 2,000 of them", "quickstart",
                         _gpu_encoder("htba12_50", 12)),
    "gpu_htba8_50_t0": ("held-out", "CIFAR-10, grid 8 px (the papers' size), 50% of class 0; the GPU reference encoder "
                        "(ResNet-18, all 50k images, 71 epochs), detection on 2,000 of them", "quickstart",
                        _gpu_encoder("htba_50", 8)),
    "imagenette_grid16_50_t0": ("held-out", "Imagenette photos at 64 px (3,925, its folder: no labelled test split), "
                                "grid 16 px, 50% of class 0", "detect_imagefolder", IMAGENETTE),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metrics(scores: np.ndarray, flagged: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    from sslguard.metrics import detection_metrics

    m = detection_metrics(scores[keep], flagged[keep], truth[keep], ks=TOP_KS)
    m["flagged_share"] = float(flagged.sum() / len(flagged))
    return m


def _purity(assignments: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """The cluster that holds most poisons: how many it holds, of how many members."""
    counts = np.bincount(assignments[truth], minlength=int(assignments.max()) + 1)
    c = int(counts.argmax())
    return {"poisons": int(counts[c]), "size": int((assignments == c).sum()), "of": int(truth.sum())}


def run_planted(work: Path) -> dict[str, Any]:
    from sslguard.cluster import resolve_k
    from sslguard.detectors import get_detector
    from sslguard.pipeline.fusion import fuse
    from sslguard.pipeline.stages import call_with_supported
    from sslguard.testing import embed_and_cluster, planted_patch_encoder_case

    t = time.perf_counter()
    case = planted_patch_encoder_case(seed=0)
    k = resolve_k("auto", len(case.dataset))
    emb, clusters = embed_and_cluster(case.backbone, case.dataset, k=k, seed=0)
    available = dict(backbone=case.backbone, dataset=case.dataset, embeddings=emb, clusters=clusters, seed=0)
    det = {n: call_with_supported(get_detector(n), available, {}) for n in SSL}  # each takes what it needs
    fused = fuse([det["poisoncam"], det["patchsearch"]], "rank_mean", "any")
    truth, keep = np.asarray(case.truth, bool), np.ones(len(case.truth), bool)
    rows = {n: _metrics(r.scores, r.flagged, truth, keep) for n, r in {**det, "fused": fused}.items()}
    return {"n": len(truth), "poisons": int(truth.sum()), "k": k, "learned": {"verdict": "learned (supervised, by construction)"},
            "purity": _purity(clusters.assignments, truth), "metrics": rows,
            "evidence": {n: str(det[n].info.get("evidence", "")) for n in SSL}, "seconds": time.perf_counter() - t,
            "fused_ranked": fused.info["ranked"],
            "command": "sslguard.testing.planted_patch_encoder_case(seed=0), detectors at cluster.k auto"}


def _learned(backdoor: dict[str, Any] | None, margin: float) -> dict[str, Any]:
    b = (backdoor or {}).get("before")
    if not b:
        return {"verdict": "unknown: " + str((backdoor or {}).get("unavailable"))}
    trig, rand, clean = b["triggered"], b["random_patch"], b["clean"]
    trig_c, rand_c, clean_c = (b.get(f"{k}_corpus_bank") for k in ("triggered", "random_patch", "clean"))
    if trig - rand >= margin:
        verdict = "learned"
    elif None not in (trig_c, clean_c) and trig_c - clean_c >= margin:
        verdict = "learned (tied to the poisons" + (", as 'a patch like it')" if rand_c - clean_c >= margin else ")")
    else:
        verdict = "not learned"
    return {"verdict": verdict, "triggered": trig, "random_patch": rand, "clean": clean,
            "triggered_corpus_bank": trig_c, "random_patch_corpus_bank": rand_c, "clean_corpus_bank": clean_c}


def run_pipeline_case(name: str, work: Path, threads: int) -> dict[str, Any]:
    from sslguard.pipeline import Pipeline, load_detect_config

    _, _, config, args = CASES[name]
    enc = ENCODERS / f"{name}.safetensors"
    given = any(a.startswith("encoder=") for a in args)  # a case that names its own encoder (the GPU ones)
    extra = [f"encoder={enc}"] if enc.exists() and not given else []
    cfg = load_detect_config(config, [*args, *extra, f"threads={threads}", f"output_dir={work}", f"name=gen_{name}"])
    t = time.perf_counter()
    pipe = Pipeline(cfg, quiet=True)
    res = pipe.run()
    seconds = time.perf_counter() - t
    data = pipe.stage_data()
    truth = data.manifests[0].is_poisoned(data.keys)
    other = np.zeros_like(truth)
    for m in data.manifests[1:]:  # the quickstart's BadNets poisons: not scored either way
        other |= m.is_poisoned(data.keys)
    keep = ~(other & ~truth)  # an image poisoned by both attacks counts as a poison
    results = {**res.detections, "fused": res.fused}
    rows = {n: _metrics(r.scores, r.flagged, truth, keep) for n, r in results.items() if n in [*SSL, "fused"]}
    assign = np.load(res.paths["clusters.npz"])["assignments"]
    summary = res.summary
    learned = _learned(summary.get("backdoor"), cfg.backdoor_margin)
    if not extra and not given and name != "quickstart":  # a CIFAR or Imagenette case trained its encoder here
        _keep_encoder(name, Path(res.run_dir) / "encoder.safetensors", config, args, summary)
    notices = [n["text"] for n in summary.get("notices", []) if n.get("level") == "warn"]
    return {"n": int(keep.sum()), "poisons": int(truth.sum()), "k": int(summary["detectors"]["poisoncam"]["info"]
                                                                          .get("params", {}).get("k", len(np.unique(assign)))),
            "learned": learned, "purity": _purity(assign, truth), "metrics": rows,
            "evidence": {n: str(res.detections[n].info.get("evidence", "")) for n in SSL if n in res.detections},
            "warnings": notices, "seconds": seconds, "encoder_given": bool(extra) or given,
            "fused_ranked": res.fused.info.get("ranked"),
            "command": f"sslguard detect --config {config} " + " ".join([*args, *extra])}


RANKING = ("auroc", "auprc", "tpr_at_1pct_fpr", *[f"top{k}_precision" for k in TOP_KS], "toptrue_precision")


def fused_ranking_now(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its fused ranking metrics as today's rule gives them (:mod:`sslguard.pipeline.fusion`: the
    fused score combines only the detectors that flagged anything). A row measured before the rule has no
    ``fused_ranked``: where exactly one of PoisonCAM and PatchSearch flagged, the fused score is now that
    detector's percentile rank, which keeps its order and ties, so the fused ranking metrics are its own
    (the fused flags are unchanged); otherwise both ranked then as now."""
    if row.get("fused_ranked") is not None or "fused" not in row["metrics"]:
        return row
    m = row["metrics"]
    flagging = [n for n in ("poisoncam", "patchsearch") if m.get(n, {}).get("n_flagged", 0) > 0]
    row["fused_ranked"] = flagging or [n for n in ("poisoncam", "patchsearch") if n in m]
    if len(flagging) == 1:
        m["fused"].update({k: m[flagging[0]][k] for k in RANKING if k in m[flagging[0]]})
        row["fused_ranking_from"] = flagging[0]
    return row


def _keep_encoder(name: str, path: Path, config: str, args: list[str], summary: dict[str, Any]) -> None:
    """Commit-ready copy of a case's trained encoder, with its recipe and sha256 (a rerun loads it)."""
    ENCODERS.mkdir(parents=True, exist_ok=True)
    dst = ENCODERS / f"{name}.safetensors"
    shutil.copyfile(path, dst)
    meta = {"case": name, "sha256": _sha256(dst), "bytes": dst.stat().st_size,
            "recipe": (f"sslguard detect --config {config} " + " ".join(args)).replace(str(ROOT) + "/", "").replace(str(ROOT.parent) + "/", "../"),
            "train_seconds": summary.get("stage_seconds", {}).get("encoder"), "date": time.strftime("%Y-%m-%d")}
    (ENCODERS / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def _f(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _learned_text(r: dict[str, Any]) -> str:
    lr = r["learned"]
    if "triggered" not in lr:
        return lr["verdict"]
    text = f"{lr['verdict']} ({lr['triggered']:.2f} / {lr['random_patch']:.2f} / {lr['clean']:.2f}"
    if lr.get("triggered_corpus_bank") is not None:
        text += (f"; corpus bank {lr['triggered_corpus_bank']:.2f} / {lr['random_patch_corpus_bank']:.2f} / "
                 f"{lr.get('clean_corpus_bank') if lr.get('clean_corpus_bank') is not None else float('nan'):.2f}")
    return text + ")"


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's bars, counted over the rows: learned cases (fused F1, PoisonCAM F1) and the clean bar."""
    out = []
    learned = [r for r in rows if r["learned"]["verdict"].startswith("learned")]
    for half in ("tuning", "held-out", None):
        sel = [r for r in learned if half is None or r["half"] == half]
        if not sel:
            continue
        fused = sum(r["metrics"]["fused"]["f1"] >= 0.9 for r in sel)
        pc = sum(r["metrics"]["poisoncam"]["f1"] >= 0.9 for r in sel)
        out.append(f"- learned cases, {half or 'all'}: fused F1 >= 0.9 on {fused} of {len(sel)}; PoisonCAM F1 >= 0.9 on "
                   f"{pc} of {len(sel)} ({pc / len(sel):.0%}; bar 80%)")
    unlearned = [r for r in rows if not r["learned"]["verdict"].startswith("learned")]
    for r in unlearned:
        share = r["metrics"]["fused"]["flagged_share"]
        out.append(f"- not learned, {r['case']}: fused flags {share:.2%} of the corpus ({'within' if share <= 0.01 else '**over**'} the 1% bar)")
    failing = [r["case"] for r in learned if r["metrics"]["fused"]["f1"] < 0.9 or r["metrics"]["poisoncam"]["f1"] < 0.9]
    if failing:
        out.append("- learned cases under a bar: " + ", ".join(failing) + " (reasons in the notes below)")
    return out


def markdown(rows: list[dict[str, Any]], argv: list[str]) -> str:
    head = ["case", "detector", "flagged (share)", "P", "R", "F1", "AUROC", "AUPRC", "TPR@1%FPR",
            *[f"top{k}" for k in TOP_KS], "top@poisons"]
    lines = ["# SSL-stage generalisation: every SSL detector and the fused flags on every case", "",
             f"Written by `python scripts/benchmark.py generalization {' '.join(argv)}`".rstrip() + f" on {time.strftime('%Y-%m-%d')}"
             " (code: `benchmarks/generalization.py`, whose docstring has the setup).", ""]
    lines += ["## Acceptance (issue 17)", "", *acceptance(rows), ""]
    lines += ["## Cases", "", "| case | half | what | images | poisons | k | learned? (triggered / random patch / clean) | "
              "best cluster: poisons / members | wall s (run) |", "|---|---|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        p = r["purity"]
        lines.append(f"| {r['case']} | {r['half']} | {r['what']} | {r['n']:,} | {r['poisons']} | {r['k']} | {_learned_text(r)} | "
                     f"{p['poisons']} / {p['size']} | {r['seconds']:.0f} |")
    for half in ("tuning", "held-out"):
        sel = [r for r in rows if r["half"] == half]
        if not sel:
            continue
        lines += ["", f"## Detection, {half} half", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sel:
            for n in [*SSL, "fused"]:
                m = r["metrics"].get(n)
                if m is None:
                    continue
                vals = [m.get("precision"), m.get("recall"), m.get("f1"), m.get("auroc"), m.get("auprc"), m.get("tpr_at_1pct_fpr"),
                        *[m.get(f"top{k}_precision") for k in TOP_KS], m.get("toptrue_precision")]
                lines.append(f"| {r['case']} | {NAMES[n]} | {m['n_flagged']} ({m['flagged_share']:.1%}) | "
                             + " | ".join(_f(v, 2 if i >= 6 else 3) for i, v in enumerate(vals)) + " |")
    lines += ["", "## Evidence each detector gave, and the run's warnings", ""]
    for r in rows:
        ev = "; ".join(f"{NAMES[n]}: {t}" for n, t in r.get("evidence", {}).items() if t)
        warn = " Warnings: " + " / ".join(r["warnings"]) if r.get("warnings") else ""
        if r.get("fused_ranking_from"):
            warn += (f" Fused ranking: {NAMES[r['fused_ranking_from']]}'s own (the one detector that flagged; the"
                     " row predates the rule that leaves a detector with no flags out of it, see the fusion notes).")
        lines.append(f"- **{r['case']}**: {ev or '-'}.{warn}")
    notes = Path(__file__).with_name("generalization_notes.md")
    if notes.exists():  # what the numbers show, written by hand after a run (kept across reruns)
        lines += ["", notes.read_text().rstrip()]
    lines += ["", "## Runs", ""]
    lines += [f"- {r['case']}: `{r['command'].replace(str(ROOT) + '/', '').replace(str(ROOT.parent) + '/', '../')}`" + (" (encoder loaded)" if r.get("encoder_given") else "")
              for r in rows] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows-from", type=Path, nargs="*", default=[],
                    help="generalization.json files whose rows stand in for cases not run here")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sslguard_generalization"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "generalization.md")
    a = ap.parse_args(argv)
    rows = []
    for name in a.cases:
        row = run_planted(a.work) if name == "planted" else run_pipeline_case(name, a.work, a.threads)
        half, what, _, _ = CASES[name]
        row.update(case=name, half=half, what=what)
        print(json.dumps(row, default=float), flush=True)
        rows.append(row)
    for f in a.rows_from:
        for row in json.loads(f.read_text()):
            if row["case"] not in {r["case"] for r in rows}:
                if row["case"] in CASES:  # the half is the case's, as defined now (a case moves to tuning once used)
                    row.update(half=CASES[row["case"]][0], what=CASES[row["case"]][1])
                rows.append(row)
    rows = [fused_ranking_now(r) for r in rows]
    order = list(CASES)
    rows.sort(key=lambda r: order.index(r["case"]) if r["case"] in order else len(order))
    a.out.write_text(markdown(rows, argv))
    a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
