"""Run an entry point in a subprocess and SIGKILL it at a seeded random moment."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    """This process's environment for a child: the same thread count (so the same float arithmetic as
    a run in this process), the repository importable, no kill hook left over."""
    import torch

    out = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    out.pop("SSLGUARD_KILL_AFTER", None)
    out.update(extra)
    return out


def run(cmd: list[str], timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def kill_when(cmd: list[str], ready: Callable[[], bool], delay: float, timeout: float = 300, **extra_env: str) -> bool:
    """Start ``cmd``; once ``ready()`` is true (polled every 10 ms), wait ``delay`` seconds and SIGKILL it.

    Returns True when the process was killed, False when it ended on its own first (it must then have
    succeeded). The process gets a fresh session, so a kill never reaches the test process.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    t_end = time.monotonic() + timeout
    try:
        while proc.poll() is None and not ready():
            if time.monotonic() > t_end:
                raise AssertionError(f"{cmd}: not ready after {timeout}s")
            time.sleep(0.01)
        if proc.poll() is None:
            time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        out = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}) before it could be killed:\n{out[-3000:]}")
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
