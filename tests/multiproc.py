"""Run a Python snippet in two CPU processes (torch.distributed with gloo, as torchrun sets it up).

``accelerate launch --cpu`` starts a single process, so multi-process CPU tests go through torchrun,
which gives each process the RANK/WORLD_SIZE/MASTER_* variables that ``Accelerator()`` reads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script_distributed(script: Path, args: list[str] | None = None, nproc: int = 2, timeout: int = 180):
    """Run ``script`` in ``nproc`` CPU processes (torchrun, gloo); raise with the output if any fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *(args or [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"distributed run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_distributed(code: str, tmp_path: Path, nproc: int = 2, args: list[str] | None = None, timeout: int = 180):
    """Write ``code`` to a script in ``tmp_path`` and run it with :func:`run_script_distributed`."""
    script = tmp_path / "dist_script.py"
    # the snippet's process group is closed at its end, as the scripts do (sslguard.cli.close_process_group)
    script.write_text(textwrap.dedent(code) + "\nfrom sslguard.cli import close_process_group\nclose_process_group()\n")
    return run_script_distributed(script, args, nproc, timeout)
