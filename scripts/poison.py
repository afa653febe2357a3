"""Poison a dataset and write its manifest (a thin wrapper of ``sslguard poison``):

    python scripts/poison.py --config poison_digits_htba --preview out.png attack.rate=0.3

See ``sslguard poison --help`` (:mod:`sslguard.cli`) for every key.
"""

from __future__ import annotations

import sys

from sslguard.cli import poison_main


def main(argv: list[str] | None = None) -> int:
    return poison_main(argv, prog="poison.py")


if __name__ == "__main__":
    sys.exit(main())
