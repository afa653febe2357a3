"""Atomic writes: an artefact is either complete on disk or absent.

Every stage of a run writes through these helpers (temp file in the same folder, fsync, then
``os.replace``), so a process killed mid-write never leaves a partial file that a later run could
mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` keeps the extension for writers that insist on one (``np.save`` appends ``.npy``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; outputs are meant to be read like any other file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class NpyRowWriter:
    """An ``.npy`` array written a block of rows at a time through a memory map, and moved onto ``path``
    only when complete (temporary file beside it, fsync, rename: the contract of :func:`atomic_path`).

    The array is never whole in memory, and the file's bytes equal those of ``np.save(path, array)``.

    Args:
        path: the final ``.npy`` path.
        shape, dtype: the array's (``create=True``); read from the file's header when attaching.
        tmp: the temporary file; by default a fresh name beside ``path``. Several processes that agree on
            one ``tmp`` can each write their own rows: one creates it, the others attach with
            ``create=False`` once it exists, all :meth:`close`, then one commits.
        create: make the temporary file (``False``: attach to an existing one).

    Use as a context manager (commit on success, remove the temporary file on an error) or call
    :meth:`commit` / :meth:`abort`.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...] | None = None, dtype=np.float32, *,
                 tmp: str | os.PathLike | None = None, create: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tmp is None:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".npy", dir=self.path.parent)
            os.close(fd)
        self.tmp = Path(tmp)
        if create:
            if shape is None:
                raise ValueError("NpyRowWriter: a shape is needed to create the file")
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        else:
            self.array = np.lib.format.open_memmap(self.tmp, mode="r+")

    def write(self, rows, values: np.ndarray) -> None:
        """``array[rows] = values`` (``rows``: a slice or an array of row positions)."""
        self.array[rows] = values

    def close(self) -> None:
        """Flush the written rows to the temporary file and drop the map (idempotent)."""
        if self.array is not None:
            self.array.flush()
            self.array = None

    def commit(self) -> Path:
        """Close, fsync, and rename the temporary file onto ``path``."""
        self.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the map and remove the temporary file."""
        self.array = None
        if self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> "NpyRowWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text that accepts numpy scalars/arrays and paths (sorted keys, so reruns are byte-equal)."""
    return json.dumps(obj, indent=indent, sort_keys=True, default=_json_default)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers, written next to every run's outputs."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("sslguard", "torch", "torchvision", "lightly", "faiss-cpu", "faiss-gpu", "scikit-learn",
                 "timm", "accelerate", "numpy", "pillow", "zennit"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
