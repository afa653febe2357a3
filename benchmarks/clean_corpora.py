"""Clean corpora stay clean: the SSL stage on corpora with nothing injected, where every flag is a false one.
Writes ``benchmarks/clean_corpora.md`` and ``clean_corpora.json``.

    python benchmarks/clean_corpora.py                    # digits, a CIFAR-10 subset, Imagenette at 64 px
    python benchmarks/clean_corpora.py --cases digits --out /tmp/clean.md
    python benchmarks/clean_corpora.py --imagenette-encoder /tmp/sslguard_scale_images/imagenette/encoder.safetensors
    python benchmarks/clean_corpora.py --cases --rows-from /tmp/a.json /tmp/b.json     # one table from earlier runs

Each case is one ``sslguard detect`` run (the pipeline, in this process) with ``attack=null``: the
quickstart config on the embedded digits (its BadNets extra attack off too), a 3,000-image CIFAR-10 subset
(BYOL convnet4, as ``benchmarks/detect.md``'s CPU encoders but shorter) and Imagenette's validation folder at
64 px (the command of ``benchmarks/scale_images.py``; ``--imagenette-encoder`` takes the encoder such a run
trained, ``encoder=``, instead of training again: 20 epochs are about 25 minutes here). ``cluster.k`` is each config's (``auto`` unless the config sets it). The acceptance
this measures (issue 17): at most 1% of a clean corpus flagged by the SSL stage, and a detector that found
no evidence saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))

SSL = ["poisoncam", "patchsearch", "density"]
CASES = {
    "digits": ("quickstart", ["attack=null", "extra_attack=null", "detectors.classifier=[]",
                              "fusion.detectors=[poisoncam, patchsearch]"]),
    "cifar10": ("quickstart", ["data.name=cifar10", "data.subset_per_class=300", "data.image_size=32",
                               "attack=null", "extra_attack=null", "ssl.method=byol", "ssl.min_scale=0.2",
                               "ssl.width=16", "ssl.epochs=30", "ssl.batch_size=256", "detectors.classifier=[]",
                               "fusion.detectors=[poisoncam, patchsearch]", "detectors.params={}"]),
    "imagenette": ("detect_imagefolder", ["data.root=" + str(ROOT.parent / "shared" / "data" / "imagenette2-224"),
                                          "data.split=val", "data.image_size=64", "data.num_workers=2",
                                          "ssl.backbone=convnet4", "ssl.width=32", "ssl.epochs=20",
                                          "detectors.classifier=[]"]),
}


def _from_run(run_dir: Path) -> dict:
    """Per-detector flags and evidence from a finished run folder."""
    from sslguard.detectors import DetectionResult

    out, k = {}, None
    for name in SSL:
        f = run_dir / "detectors" / f"{name}.json"
        if f.exists():
            r = DetectionResult.load_json(f)
            out[name] = {"flagged": int(r.flagged.sum()), "evidence": str(r.info.get("evidence", "")),
                         "seconds": float(r.info.get("timings", {}).get("total_s", float("nan")))}
            k = k if k is not None else r.info.get("params", {}).get("k")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"n": int(summary["n_images"]), "fused_flagged": int(summary["n_flagged"]), "detectors": out,
            "k": None if k is None else int(k)}


def run_case(name: str, work: Path, extra: list[str]) -> dict:
    from sslguard.pipeline import Pipeline, load_detect_config

    config, args = CASES[name]
    args = [*args, *extra]
    cfg = load_detect_config(config, [*args, f"output_dir={work}", f"name=clean_{name}"])
    t = time.perf_counter()
    Pipeline(cfg, quiet=True).run()
    row = _from_run(work / f"clean_{name}")
    row.update(case=name, seconds=time.perf_counter() - t, command=f"sslguard detect --config {config} " + " ".join(args))
    return row


def run_without_colour_control(name: str, work: Path) -> dict:
    """The case again on its first run's encoder, with both detectors' colour control off (side by side)."""
    enc = work / f"clean_{name}" / "encoder.safetensors"
    off = ["detectors.params.poisoncam.colour_control=false", "detectors.params.patchsearch.colour_control=false"]
    config, args = CASES[name]
    args = [a for a in args if not a.startswith("detectors.params")] + [f"encoder={enc}", *off]
    from sslguard.pipeline import Pipeline, load_detect_config

    cfg = load_detect_config(config, [*args, f"output_dir={work}", f"name=clean_{name}_nocolour"])
    t = time.perf_counter()
    Pipeline(cfg, quiet=True).run()
    row = _from_run(work / f"clean_{name}_nocolour")
    row.update(case=f"{name}, colour control off", seconds=time.perf_counter() - t,
               command=f"sslguard detect --config {config} " + " ".join(args))
    return row


def markdown(rows: list[dict], argv: list[str]) -> str:
    lines = ["# Clean corpora: what the SSL stage flags when nothing was injected", "",
             f"Written by `python benchmarks/clean_corpora.py {' '.join(argv)}`".rstrip() + f" on {time.strftime('%Y-%m-%d')}.",
             "Every flag here is a false one. Bar (issue 17): at most 1% of the corpus.", "",
             "| corpus | images | k | PoisonCAM flags | PatchSearch flags | fused flags (share) | within 1% | PoisonCAM evidence | PatchSearch evidence |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        d = r["detectors"]
        share = r["fused_flagged"] / max(1, r["n"])
        lines.append(f"| {r['case']} | {r['n']:,} | {r['k']} | {d.get('poisoncam', {}).get('flagged', '-')} | "
                     f"{d.get('patchsearch', {}).get('flagged', '-')} | {r['fused_flagged']} ({share:.2%}) | "
                     f"{'yes' if share <= 0.01 else '**no**'} | {d.get('poisoncam', {}).get('evidence', '-')} | "
                     f"{d.get('patchsearch', {}).get('evidence', '-')} |")
    lines += ["", "*Fused flags* are the run's output (`fusion.flag: any` over PoisonCAM and PatchSearch): a detector",
              "that flags images in most classes, where a backdoor's poisons share one label, is named in a warning",
              "and does not vote (`sslguard/plausibility.py`), which is how a row can show a detector's flags and",
              "none fused. The colour control only acts on windows that reached the paste bar (and draws from its",
              "own random stream), so a row in which no detector's windows reached it is the same with it on or off.",
              "", "Runs (wall time with SSL training, unless an encoder was given):", ""]
    lines += [f"- {r['case']}: `{r['command']}` ({r['seconds']:.0f} s)" for r in rows] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--imagenette-encoder", type=Path, default=None,
                    help="an encoder trained on Imagenette with the same settings (encoder=...)")
    ap.add_argument("--compare-colour-control", nargs="*", default=["digits", "cifar10"], choices=list(CASES),
                    help="cases also run with the detectors' colour control off, on the same encoder")
    ap.add_argument("--rows-from", type=Path, nargs="*", default=[],
                    help="clean_corpora.json files whose rows stand in for cases not run here (the first file "
                         "that has a case wins)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sslguard_clean_corpora"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "clean_corpora.md")
    a = ap.parse_args(argv)
    rows = []
    for name in a.cases:
        extra = [f"encoder={a.imagenette_encoder}"] if name == "imagenette" and a.imagenette_encoder else []
        row = run_case(name, a.work, extra)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if name in a.compare_colour_control:
            row = run_without_colour_control(name, a.work)
            print(json.dumps(row), flush=True)
            rows.append(row)
    for f in a.rows_from:
        for row in json.loads(f.read_text()):
            if row["case"].split(",")[0] not in a.cases and row["case"] not in {r["case"] for r in rows}:
                row["command"] += f" (row read from {f}, an earlier run of this script)"
                rows.append(row)
    a.out.write_text(markdown(rows, argv))
    a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
