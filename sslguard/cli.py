"""The ``sslguard`` command: ``sslguard detect | train | poison | benchmark ...`` (``[project.scripts]``).

    sslguard detect                                   # the quickstart (embedded digits, shipped config)
    sslguard detect --config detect_imagefolder data.root=/path/to/images name=mine
    accelerate launch -m sslguard.cli detect --config my.yaml ssl.epochs=50
    sslguard train --config quickstart_ssl ssl.epochs=5
    sslguard poison --config poison_digits_htba --preview out.png attack.rate=0.3

``--config`` takes a YAML path or the name of a config shipped with the package (``sslguard/configs/<command>/``),
so the installed command works from any directory. Dotted overrides (``key=value``, values parsed as YAML;
``attack=null`` removes the attack) are applied on top. ``scripts/*.py`` are thin wrappers of these commands.

At the boundary, input problems become one line, not a traceback: a bad config value, an unreadable or
missing file, a request the data cannot satisfy (more poisons than eligible images) print one line naming
the key or file, with exit code 2 for configuration and 1 for data. ``SSLGUARD_DEBUG=1`` re-raises them.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from sslguard.config import (
    ConfigError,
    DetectConfig,
    PoisonConfig,
    TrainSSLConfig,
    describe_keys,
    dump_yaml,
    load_config,
    shipped_configs,
)

# The commands import the heavy parts (torch, the pipeline, image loading) when they run, so that
# `sslguard --help` and a config error answer at once.

EXIT_CONFIG = 2
EXIT_DATA = 1
DEFAULT_DETECT_CONFIG = "quickstart"


def run_guarded(fn: Callable[[], int]) -> int:
    """Run ``fn``; input errors become one line on stderr and exit code 2 (config) or 1 (data)."""
    from sslguard.data.images import ImageLoadError
    from sslguard.sanitize import ManifestPathError

    try:
        return fn()
    except ConfigError as exc:
        if os.environ.get("SSLGUARD_DEBUG"):
            raise
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (ImageLoadError, ManifestPathError, FileNotFoundError, NotADirectoryError, KeyError, ValueError) as exc:
        if os.environ.get("SSLGUARD_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}  (set SSLGUARD_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_DATA
    finally:
        close_process_group()


def close_process_group() -> None:
    """Tear down a torch.distributed group this process joined (``accelerate launch``/torchrun).

    Left alive to interpreter exit, gloo's threads can abort a rank ("terminate called without an
    active exception", exit -6) after all its work is done, which fails the whole launch."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def options_help(cls: type) -> str:
    """Every configuration key of ``cls`` with its default and meaning (the ``--help`` epilog)."""
    rows = describe_keys(cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["configuration keys (key=default  # meaning):"]
    for key, default, comment in rows:
        lines.append(f"  {key.ljust(width)} = {default}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def _parser(prog: str, description: str, cls: type, config_default: str | None) -> argparse.ArgumentParser:
    shipped = ", ".join(shipped_configs(cls.CONFIG_FOLDER))
    ap = argparse.ArgumentParser(prog=prog, description=description, epilog=options_help(cls),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=config_default,
                    help=f"YAML path or shipped config name ({shipped}); default: {config_default or 'none'}")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ssl.epochs=5 attack=null name=mine")
    return ap


# -------------------------------------------------------------------------------------------- detect


def detect_main(argv: list[str] | None = None, prog: str = "sslguard detect") -> int:
    """Sanitise a corpus: train (or load) an SSL encoder, run the detectors, write scores, flags, a clean
    manifest and report.html to runs/<name>/. A rerun with the same settings reuses every finished stage."""
    ap = _parser(prog, detect_main.__doc__, DetectConfig, DEFAULT_DETECT_CONFIG)
    ap.add_argument("--quiet", action="store_true", help="no progress output, only the final lines")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_guarded(lambda: _detect(args))


def _detect(args: argparse.Namespace) -> int:
    from sslguard.pipeline import load_detect_config, run_pipeline

    cfg = load_detect_config(args.config, args.overrides)
    t0 = time.perf_counter()
    result = run_pipeline(cfg, quiet=args.quiet)
    if result is None:  # a non-main process of a distributed launch
        return 0
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
    _print_metrics(result.metrics, s["n_poisoned"])
    print(f"wall time: {time.perf_counter() - t0:.1f}s")
    return 0


def _print_metrics(metrics: dict[str, dict[str, float]], n_poisoned: int | None) -> None:
    if not metrics:
        print("no ground truth (no attack injected): no detection metrics")
        return
    w = max(len(n) for n in metrics)
    per_attack = sorted({k for m in metrics.values() for k in m if k.startswith("recall_")})
    extra = "".join(f"  recall:{k.removeprefix('recall_')}" for k in per_attack)
    print(f"{'detector'.ljust(w)}  precision  recall  AUROC  flagged{extra}   ({n_poisoned} poisoned)")
    for name, m in metrics.items():
        cols = "".join(f"  {m[k]:{len(k) + 1 - len('recall_') + len('recall:')}.3f}" for k in per_attack)
        print(f"{name.ljust(w)}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['auroc']:5.3f}  {m['n_flagged']:7d}{cols}")


# --------------------------------------------------------------------------------------------- train


def train_main(argv: list[str] | None = None, prog: str = "sslguard train") -> int:
    """Pretrain an SSL encoder (SimCLR or BYOL) and write encoder.safetensors, checkpoints and history.
    A run with the same output_dir and settings resumes from its last epoch checkpoint."""
    args = _parser(prog, train_main.__doc__, TrainSSLConfig, None).parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_guarded(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    from sslguard.pipeline.encoder import train_ssl_from_config

    res = train_ssl_from_config(load_config(TrainSSLConfig, args.config, args.overrides))
    knn = f", kNN top-1 {res.final_knn:.4f}" if res.final_knn is not None else ""
    print(f"{len(res.history)} epochs, final loss {res.losses[-1]:.4f}{knn}, "
          f"{res.images_per_second:.0f} img/s; encoder: {res.encoder_path}")
    return 0


# -------------------------------------------------------------------------------------------- poison


def poison_main(argv: list[str] | None = None, prog: str = "sslguard poison") -> int:
    """Poison a dataset and write its ground-truth manifest (CSV + JSON) and an optional preview grid."""
    ap = _parser(prog, poison_main.__doc__, PoisonConfig, None)
    ap.add_argument("--preview", help="PNG grid of clean vs poisoned examples (overrides the config's preview)")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after --preview
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"preview={args.preview}"] if args.preview else [])
    return run_guarded(lambda: _poison(args.config, overrides))


def _poison(config: str | None, overrides: list[str]) -> int:
    from sslguard.data.attacks.export import poison_and_save
    from sslguard.data.datasets import build_dataset
    from sslguard.utils.io import atomic_write_json, atomic_write_text, package_versions

    cfg = load_config(PoisonConfig, config, overrides)
    d = cfg.data
    dataset = build_dataset(d.name, split=d.split, root=d.root, subset_per_class_n=d.subset_per_class,
                            seed=cfg.data_seed, on_error=d.on_error, image_size=d.image_size)
    attack = cfg.attack.build()
    out = Path(cfg.output_dir)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    atomic_write_json(out / "versions.json", package_versions())
    _, manifest, paths = poison_and_save(dataset, attack, out, preview=cfg.preview, preview_n=cfg.preview_n)
    print(f"{manifest.n_poisoned} of {len(dataset)} poisoned by {attack.name}; "
          + ", ".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


# ----------------------------------------------------------------------------------------- benchmark


def benchmark_main(argv: list[str] | None = None) -> int:
    """Benchmarks live beside their results in a source checkout (``benchmarks/``), not in the installed
    package: run ``scripts/benchmark.py`` of the checkout in the current directory."""
    script = Path.cwd() / "scripts" / "benchmark.py"
    if not script.is_file():
        print("error: sslguard benchmark runs from a source checkout (scripts/benchmark.py and benchmarks/ "
              "are not installed); cd into one", file=sys.stderr)
        return EXIT_CONFIG
    import runpy

    sys.argv = [str(script), *(argv or [])]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_DATA
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "detect": detect_main, "train": train_main, "poison": poison_main, "benchmark": benchmark_main,
}


def main(argv: list[str] | None = None) -> int:
    """``sslguard <command> [args]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.split("\n\n")[0] + "\n\ncommands: " + ", ".join(COMMANDS)
              + "  (sslguard <command> --help for its options)", file=sys.stderr if argv and argv[0] not in
              ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_CONFIG
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
