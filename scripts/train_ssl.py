"""Pretrain an SSL encoder (a thin wrapper of ``sslguard train``, kept for ``accelerate launch``):

    python scripts/train_ssl.py --config quickstart_ssl ssl.epochs=5
    accelerate launch --num_processes 4 scripts/train_ssl.py --config cifar10_simclr

See ``sslguard train --help`` (:mod:`sslguard.cli`) for every key.
"""

from __future__ import annotations

import sys

from sslguard.cli import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, prog="train_ssl.py")


if __name__ == "__main__":
    sys.exit(main())
