"""Poison a dataset and write its ground-truth manifest (CSV + JSON) and an optional preview grid.

    python scripts/poison.py --config configs/poison_digits_htba.yaml --preview out.png attack.rate=0.3

Dotted overrides (``key=value``, values parsed as YAML) are applied on top of the config file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sslguard.config import PoisonConfig, dump_yaml, load_config
from sslguard.data.attacks import build_attack
from sslguard.data.attacks.export import poison_and_save
from sslguard.data.datasets import build_dataset
from sslguard.utils.io import atomic_write_json, atomic_write_text, package_versions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (sections: data, attack; keys output_dir, preview)")
    ap.add_argument("--preview", help="PNG grid of clean vs poisoned examples (overrides the config's preview)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. attack.rate=0.2 data.name=cifar10")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after --preview
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"preview={args.preview}"] if args.preview else [])
    from sslguard.cli import run_guarded

    return run_guarded(lambda: _run(args, overrides))


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load_config(PoisonConfig, args.config, overrides)
    d, a = cfg.data, cfg.attack
    dataset = build_dataset(d.name, split=d.split, root=d.root, subset_per_class_n=d.subset_per_class,
                            seed=cfg.data_seed, on_error=d.on_error, image_size=d.image_size)
    attack = build_attack(a.name, target=a.target, rate=a.rate, rate_of=a.rate_of, seed=a.seed, **a.params)
    out = Path(cfg.output_dir)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    atomic_write_json(out / "versions.json", package_versions())
    _, manifest, paths = poison_and_save(dataset, attack, out, preview=cfg.preview, preview_n=cfg.preview_n)
    print(f"{manifest.n_poisoned} of {len(dataset)} poisoned by {attack.name}; "
          + ", ".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
