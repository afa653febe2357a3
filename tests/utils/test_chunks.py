import numpy as np
import pytest

from sslguard.utils.chunks import iter_rows, readonly_map, row_chunks


def test_row_chunks_cover_the_rows_on_the_search_grid():
    assert row_chunks(0, 10) == []
    assert row_chunks(5, 10) == [(0, 5)]
    assert row_chunks(10_000, 4096) == [(0, 4096), (4096, 10_000)]  # a short tail joins the block before
    assert row_chunks(12_288, 5000) == [(0, 8192), (8192, 12_288)]  # blocks round up to 4,096 rows
    assert row_chunks(9, 2, align=2) == [(0, 2), (2, 4), (4, 6), (6, 9)]
    with pytest.raises(ValueError):
        row_chunks(5, 0)


def test_iter_rows_reads_a_read_only_map_block_by_block(tmp_path):
    x = np.arange(10_000 * 3, dtype=np.float64).reshape(10_000, 3)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert readonly_map(mapped) is not None and readonly_map(np.asarray(mapped)) is not None
    assert readonly_map(x) is None and readonly_map(np.load(tmp_path / "x.npy", mmap_mode="c")) is None
    blocks = list(iter_rows(mapped, 4096))
    assert [s for s, _ in blocks] == [0, 4096]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for _, b in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), x.astype(np.float32))
    assert mapped[9_999, 2] == x[9_999, 2]  # released pages read back from the file
