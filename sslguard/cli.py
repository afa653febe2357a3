"""What every script does at its boundary: input problems become one line, not a traceback.

Errors that describe the user's input (a bad config value, an unreadable or missing file, a request
the data cannot satisfy such as more poisons than eligible images) are printed as one line naming
the key or file, with exit code 2 for configuration and 1 for data. ``SSLGUARD_DEBUG=1`` re-raises
them so the traceback is there when a developer needs it. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from sslguard.config import ConfigError

EXIT_CONFIG = 2
EXIT_DATA = 1


def run_guarded(fn: Callable[[], int]) -> int:
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
