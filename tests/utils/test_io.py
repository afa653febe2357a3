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
