"""Sanitise a corpus (a thin wrapper of ``sslguard detect``, kept for ``accelerate launch``):

    python scripts/detect.py                                  # the shipped quickstart config (embedded digits)
    python scripts/detect.py --config detect_imagefolder data.root=/path/to/images
    accelerate launch scripts/detect.py --config my.yaml ssl.epochs=50

See ``sslguard detect --help`` (:mod:`sslguard.cli`) for every key. Exit codes: 0 done, 2 bad
configuration (one line naming the key), 1 unusable data (one line naming the file).
"""

from __future__ import annotations

import sys

from sslguard.cli import detect_main


def main(argv: list[str] | None = None) -> int:
    return detect_main(argv, prog="detect.py")


if __name__ == "__main__":
    sys.exit(main())
