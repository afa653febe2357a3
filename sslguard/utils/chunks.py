"""Row-chunked reading of (N, D) arrays that may be memory-mapped (``np.load(path, mmap_mode="r")``).

The clustering and density code reads large embedding matrices a block of rows at a time, so that a
corpus larger than memory is never held whole. Reading a memory-mapped file brings its pages into the
process's resident set (they count in RSS and ``ru_maxrss`` although the kernel may drop them);
:func:`iter_rows` hands such pages back after each block of a read-only map, so a full pass over a
mapped file costs about one block of resident memory, not the file's size.
"""

from __future__ import annotations

import mmap
from typing import Iterator

import numpy as np

# faiss' flat search works on blocks of 4,096 queries; chunk edges on that grid give the same bits as
# one call over all rows (see row_chunks)
ALIGN_ROWS = 4096


def row_chunks(n: int, chunk_rows: int, align: int = ALIGN_ROWS) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in blocks of ``chunk_rows`` rows.

    ``chunk_rows`` is rounded up to a multiple of ``align``, and a last block shorter than ``align`` is
    merged into the one before it (so no block falls below faiss's brute-force threshold and every
    block boundary is one that a single search over all rows would have used as well).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    step = -(-int(chunk_rows) // align) * align
    edges = list(range(0, n, step)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < align:
        del edges[-2]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def readonly_map(x: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` under ``x`` when ``x`` is (a view of) a read-only ``np.memmap``, else ``None``."""
    base = x
    while base is not None:
        if isinstance(base, np.memmap):
            m = getattr(base, "_mmap", None)
            return m if base.mode == "r" and isinstance(m, mmap.mmap) else None
        base = getattr(base, "base", None)
    return None


def release_pages(x: np.ndarray) -> None:
    """Drop the resident pages of a read-only mapped ``x`` (they are re-read from the file if touched)."""
    m = readonly_map(x)
    if m is None or not hasattr(mmap, "MADV_DONTNEED") or m.closed:
        return
    try:
        m.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # an unusual platform or map: keep the pages, nothing is wrong
        pass


def iter_rows(x: np.ndarray, chunk_rows: int, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, block)``: C-contiguous ``dtype`` blocks of ``x``'s rows, in order.

    A block may be a view of ``x`` (never write into it). When ``x`` is a read-only memory map, its
    pages are released after each block (:func:`release_pages`).
    """
    for a, b in row_chunks(len(x), chunk_rows):
        yield a, np.ascontiguousarray(x[a:b], dtype=dtype)
        release_pages(x)
