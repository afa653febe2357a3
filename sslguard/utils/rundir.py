"""A run folder whose stages are cached and resumed: fingerprints, per-stage stamps, the kill test hook.

A stage's *fingerprint* hashes the configuration parts it depends on and its upstream stages'
fingerprints. After a stage's artefacts are written, a stamp ``.stages/<stage>.json`` records the
fingerprint and each artefact's size and SHA-256; a stage is skipped when its stamp matches and every
artefact is intact, so a killed run resumes at the first stage without a valid stamp.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sslguard.utils.io import atomic_write_json, file_sha256, to_json
from sslguard.utils.seed import seed_everything

#: Test hook: ``SSLGUARD_KILL_AFTER=<stage>`` makes the process SIGKILL itself right after that stage
#: is committed (e.g. ``embed`` or ``detector:poisoncam``), so tests can check that a rerun resumes.
KILL_ENV = "SSLGUARD_KILL_AFTER"
STAGE_VERSION = 1  # bump when an artefact's format changes, so old stamps stop matching



def fingerprint(*parts: Any) -> str:
    """Short SHA-256 of the JSON of ``parts`` (sorted keys, numpy-aware)."""
    return hashlib.sha256(to_json([STAGE_VERSION, *parts], indent=None).encode()).hexdigest()[:20]


def say(msg: str, quiet: bool = False) -> None:
    """Progress line on stderr unless ``quiet``."""
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class RunDir:
    """``runs/<name>/`` with per-stage stamps (``.stages/<stage>.json``) that make stages skippable."""

    def __init__(self, root: str | os.PathLike, quiet: bool = False, is_main: bool = True):
        self.root = Path(root)
        self.quiet = quiet
        self.is_main = is_main
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        # With several processes: turns the main process's "cached?" into every process's answer (set by
        # the pipeline while the processes share stages), so none skips a stage the others compute together.
        self.agree: Callable[[bool], bool] | None = None
        self.current: str | None = None  # the stage being computed (read by tests and progress hooks)
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def _stamp(self, stage: str) -> Path:
        return self.root / ".stages" / f"{stage.replace(':', '__')}.json"

    def valid(self, stage: str, fp: str) -> bool:
        """True when ``stage`` was committed with fingerprint ``fp`` and its artefacts are intact."""
        stamp = self._stamp(stage)
        if not stamp.exists():
            return False
        try:
            rec = json.loads(stamp.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if rec.get("fingerprint") != fp:
            return False
        for name, meta in rec.get("files", {}).items():
            p = self.root / name
            try:
                if p.stat().st_size != meta["size"] or file_sha256(p) != meta["sha256"]:
                    return False
            except OSError:
                return False
        return True

    def commit(self, stage: str, fp: str, files: Sequence[str], seconds: float) -> None:
        """Stamp ``stage`` as done (after its artefacts are on disk); honours the kill test hook."""
        if self.is_main:
            rec = {"stage": stage, "fingerprint": fp, "seconds": round(seconds, 3),
                   "files": {f: {"size": (self.root / f).stat().st_size, "sha256": file_sha256(self.root / f)}
                             for f in files}}
            atomic_write_json(self._stamp(stage), rec)
        self.timings[stage] = seconds
        if os.environ.get(KILL_ENV) == stage:
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, stage: str, fp: str, files: Sequence[str], compute: Callable[[], None]) -> bool:
        """Run ``compute`` (which writes ``files``) unless a valid stamp exists; returns True when cached."""
        cached = self.valid(stage, fp) if self.is_main or self.agree is None else False
        if self.agree is not None:
            cached = self.agree(cached)
        if cached:
            self.cached.append(stage)
            self.timings[stage] = 0.0
            say(f"[{stage}] cached", self.quiet)
            return True
        t0 = time.perf_counter()
        say(f"[{stage}] running", self.quiet)
        self.current = stage
        try:
            compute()
        finally:
            self.current = None
        dt = time.perf_counter() - t0
        self.commit(stage, fp, files, dt)
        say(f"[{stage}] done in {dt:.1f}s", self.quiet)
        return False


def stage_seed(seed: int, stage: str) -> int:
    """A seed per stage, so a stage gives the same result whether it runs after others or alone."""
    return int(np.random.SeedSequence([int(seed), *stage.encode()]).generate_state(1)[0] % (2**31))


def seed_stage(seed: int, stage: str) -> None:
    """Seed python, numpy and torch for ``stage`` (:func:`stage_seed`)."""
    seed_everything(stage_seed(seed, stage))
