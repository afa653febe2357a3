"""Sanitising a corpus: lists of what to keep, never a change to the source files.

Outputs (all written atomically):

- ``clean_indices.txt``: one dataset index per line, the images kept;
- ``clean_manifest.txt``: one path per line, relative to the dataset root when the images are files
  (absent for in-memory datasets such as CIFAR-10 arrays or digits, where the indices are the list);
- ``flagged.txt``: ``index<TAB>path`` of every flagged image.

A manifest read back with :func:`read_file_list` must stay inside its root unless the caller says
``allow_outside=True``: a manifest is data that may come from elsewhere, and ``../../etc/passwd`` or
an absolute path must not turn a retraining run into a read of arbitrary files.
:func:`build_clean_tree` makes a link (or copy) tree of the kept files for tools that want a folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sslguard.utils.io import atomic_write_text


class ManifestPathError(ValueError):
    """A manifest line that points outside the allowed root."""


@dataclass
class SanitizeOutputs:
    clean_indices: Path
    flagged: Path
    clean_manifest: Path | None
    n_kept: int
    n_flagged: int


def _common_root(paths: Sequence[str]) -> Path | None:
    try:
        return Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    except ValueError:
        return None


def write_clean_manifest(out_dir: str | os.PathLike, dataset, flagged_keys: Sequence[int] | np.ndarray,
                         root: str | os.PathLike | None = None) -> SanitizeOutputs:
    """Write the keep/flag lists for ``dataset`` given the flagged indices (keys)."""
    out = Path(out_dir)
    keys = np.asarray(dataset.keys, dtype=np.int64)
    flagged_set = {int(k) for k in np.asarray(flagged_keys).tolist()}
    unknown = flagged_set - set(keys.tolist())
    if unknown:
        raise KeyError(f"flagged indices not in the dataset: {sorted(unknown)[:5]}")
    paths = dataset.all_paths() if hasattr(dataset, "all_paths") else [None] * len(keys)
    for p in paths:  # one path per line: a name with a line break would inject a second entry
        if p and ("\n" in p or "\r" in p):
            raise ValueError(f"{p!r}: a file name with a line break cannot be written to a manifest")
    kept = [i for i, k in enumerate(keys.tolist()) if k not in flagged_set]
    flagged_pos = [i for i, k in enumerate(keys.tolist()) if k in flagged_set]
    clean_indices = atomic_write_text(out / "clean_indices.txt", "".join(f"{keys[i]}\n" for i in kept))
    flagged_txt = atomic_write_text(out / "flagged.txt", "".join(f"{keys[i]}\t{paths[i] or ''}\n" for i in flagged_pos))
    manifest = None
    real_paths = [p for p in paths if p]
    if real_paths and len(real_paths) == len(paths):
        base = Path(root) if root is not None else (getattr(dataset, "root", None) or _common_root(real_paths))
        lines = []
        for i in kept:
            p = Path(paths[i])
            try:
                lines.append(p.resolve().relative_to(Path(base).resolve()).as_posix())
            except ValueError:
                lines.append(str(p.resolve()))
        manifest = atomic_write_text(out / "clean_manifest.txt",
                                     f"# root: {Path(base).resolve()}\n" + "".join(f"{line}\n" for line in lines))
    return SanitizeOutputs(clean_indices, flagged_txt, manifest, len(kept), len(flagged_pos))


def read_index_list(path: str | os.PathLike) -> np.ndarray:
    """Indices from ``clean_indices.txt`` (blank lines and ``#`` comments ignored); errors name the line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(int(line.split()[0]))
        except ValueError:
            raise ValueError(f"{path}:{n}: not an index: {line!r}") from None
    return np.asarray(out, dtype=np.int64)


def read_file_list(path: str | os.PathLike, root: str | os.PathLike | None = None, allow_outside: bool = False) -> list[Path]:
    """Paths from ``clean_manifest.txt``, resolved against ``root`` (default: its ``# root:`` line).

    Raises :class:`ManifestPathError` naming the line when a path escapes ``root`` (``..``, absolute
    paths, symlinks leading out) unless ``allow_outside`` is set.
    """
    text = Path(path).read_text().splitlines()
    if root is None:
        header = [t for t in text if t.startswith("# root:")]
        if not header:
            raise ValueError(f"{path}: no root given and no '# root:' line in the manifest")
        root = header[0].split(":", 1)[1].strip()
    base = Path(root).resolve()
    out = []
    for n, line in enumerate(text, 1):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        p = (base / line).resolve()
        if not allow_outside and base != p and base not in p.parents:
            raise ManifestPathError(f"{path}:{n}: {line!r} points outside {base} (allow_outside=True to permit)")
        out.append(p)
    return out


def build_clean_tree(files: Sequence[Path], root: str | os.PathLike, dest: str | os.PathLike, mode: str = "symlink") -> Path:
    """Mirror ``files`` (inside ``root``) under ``dest`` as symlinks or copies; the sources are only read."""
    if mode not in ("symlink", "copy"):
        raise ValueError(f"mode must be 'symlink' or 'copy', not {mode!r}")
    root, dest = Path(root).resolve(), Path(dest)
    if dest.resolve() == root or root in dest.resolve().parents:
        raise ValueError(f"{dest}: the clean tree must not be inside the source folder {root}")
    for f in files:
        rel = Path(f).resolve().relative_to(root)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if mode == "symlink":
            target.symlink_to(Path(f).resolve())
        else:
            shutil.copy2(f, target)
    return dest
