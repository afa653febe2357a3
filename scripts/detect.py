"""Sanitise a corpus: train (or load) an SSL encoder, run the detectors, write scores, flags, a clean
manifest and report.html to runs/<name>/.

    python scripts/detect.py                                  # configs/quickstart.yaml (embedded digits)
    python scripts/detect.py --config configs/detect_imagefolder.yaml data.root=/path/to/images
    accelerate launch scripts/detect.py --config configs/<x>.yaml ssl.epochs=50

Dotted overrides (key=value, values parsed as YAML; attack=null removes the attack) are applied on
top of the config file. A rerun with the same settings reuses every finished stage.
Exit codes: 0 done, 2 bad configuration (one line naming the key), 1 unusable data (one line naming the file).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "quickstart.yaml"


def options_help() -> str:
    from sslguard.config import DetectConfig, describe_keys

    rows = describe_keys(DetectConfig)
    width = max(len(k) for k, _, _ in rows)
    lines = ["configuration keys (key=default  # meaning):"]
    for key, default, comment in rows:
        lines.append(f"  {key.ljust(width)} = {default}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="detect.py", description=__doc__, epilog=options_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(ROOT)})")
    ap.add_argument("--quiet", action="store_true", help="no progress output, only the final lines")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ssl.epochs=5 attack=null name=mine")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from sslguard.cli import run_guarded

    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from sslguard.pipeline import load_detect_config, run_pipeline

    config = args.config if args.config is not None else DEFAULT_CONFIG
    cfg = load_detect_config(config, args.overrides)
    t0 = time.perf_counter()
    result = run_pipeline(cfg, quiet=args.quiet)
    if result is None:  # a non-main process of a distributed launch
        return 0
    wall = time.perf_counter() - t0
    s = result.summary
    notes = sorted(s.get("notices", []), key=lambda n: n["level"] != "warn")  # warnings first
    for note in notes:
        if note["level"] == "warn":
            print(f"WARNING: {note['text']}")
    print(f"report: {result.report_path}")
    print(f"{s['n_flagged']} of {s['n_images']} images flagged; clean list: {result.paths['clean_indices.txt']}"
          + (f" and {result.paths['clean_manifest.txt']}" if "clean_manifest.txt" in result.paths else ""))
    for note in notes:
        if note["level"] != "warn":
            print(f"{note['level']}: {note['text']}")
    if result.metrics:
        w = max(len(n) for n in result.metrics)
        per_attack = sorted({k for m in result.metrics.values() for k in m if k.startswith("recall_")})
        extra = "".join(f"  recall:{k.removeprefix('recall_')}" for k in per_attack)
        print(f"{'detector'.ljust(w)}  precision  recall  AUROC  flagged{extra}   ({s['n_poisoned']} poisoned)")
        for name, m in result.metrics.items():
            cols = "".join(f"  {m[k]:{len(k) + 1 - len('recall_') + len('recall:')}.3f}" for k in per_attack)
            print(f"{name.ljust(w)}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['auroc']:5.3f}  {m['n_flagged']:7d}{cols}")
    else:
        print("no ground truth (no attack injected): no detection metrics")
    print(f"wall time: {wall:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
