"""Pretrain an SSL encoder (SimCLR or BYOL) and write encoder.safetensors, checkpoints and history.

    python scripts/train_ssl.py --config configs/quickstart_ssl.yaml ssl.epochs=5
    accelerate launch --num_processes 4 scripts/train_ssl.py --config configs/cifar10_simclr.yaml

Dotted overrides (``key=value``, values parsed as YAML) are applied on top of the config file. A run
with the same output_dir and settings resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sslguard.config import TrainSSLConfig, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (sections: data, attack, ssl; keys output_dir, resume)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ssl.epochs=5 attack=null")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sslguard.cli import run_guarded

    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(TrainSSLConfig, args.config, args.overrides)
    from sslguard.train.ssl import train_ssl_from_config

    res = train_ssl_from_config(cfg)
    knn = f", kNN top-1 {res.final_knn:.4f}" if res.final_knn is not None else ""
    print(f"{len(res.history)} epochs, final loss {res.losses[-1]:.4f}{knn}, "
          f"{res.images_per_second:.0f} img/s; encoder: {res.encoder_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
