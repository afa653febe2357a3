import os

import numpy as np
import pytest

from sslguard.utils.io import atomic_path, atomic_write_json, atomic_write_text, save_npy


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "complete")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_json_is_deterministic_and_accepts_numpy(tmp_path):
    a = atomic_write_json(tmp_path / "a.json", {"b": np.int64(3), "a": np.arange(2), "c": np.float32(0.5)}).read_text()
    b = atomic_write_json(tmp_path / "b.json", {"c": 0.5, "a": [0, 1], "b": 3}).read_text()
    assert a == b


def test_save_npy_keeps_the_name(tmp_path):
    p = save_npy(tmp_path / "emb.npy", np.eye(3, dtype=np.float32))
    assert p.name == "emb.npy" and np.array_equal(np.load(p), np.eye(3))


def test_outputs_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "report.html", "x")
    finally:
        os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o644


def test_npy_row_writer_writes_np_save_bytes_atomically(tmp_path):
    from sslguard.utils.io import NpyRowWriter

    x = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    target = tmp_path / "emb.npy"
    with NpyRowWriter(target, x.shape) as w:
        for s in range(0, 37, 10)[::-1]:  # any order, a block of rows at a time
            w.write(np.arange(s, min(s + 10, 37)), x[s:s + 10])
        assert not target.exists()
    np.save(tmp_path / "ref.npy", x)
    assert target.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    with pytest.raises(RuntimeError):
        with NpyRowWriter(tmp_path / "other.npy", x.shape) as w:
            w.write(slice(0, 10), x[:10])
            raise RuntimeError("killed mid-write")
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "ref.npy"]
    # two writers on one agreed temporary file (as two processes do), one commit
    tmp = tmp_path / ".shared.partial.npy"
    a = NpyRowWriter(tmp_path / "shared.npy", x.shape, tmp=tmp)
    b = NpyRowWriter(tmp_path / "shared.npy", tmp=tmp, create=False)
    a.write(slice(0, 20), x[:20])
    b.write(slice(20, 37), x[20:])
    b.close()
    a.close()
    assert np.array_equal(np.load(a.commit()), x) and not tmp.exists()
