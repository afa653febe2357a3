import hashlib

import numpy as np
import pytest
from PIL import Image

from sslguard.data import ImageFolderDataset, load_digits_dataset
from sslguard.sanitize import (
    ManifestPathError,
    build_clean_tree,
    read_file_list,
    read_index_list,
    write_clean_manifest,
)


def _folder(tmp_path):
    root = tmp_path / "src"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 10, 200 if c == "cat" else 0)).save(root / c / f"{c} {i}.png")
    return root


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_round_trip_and_source_untouched(tmp_path):
    root = _folder(tmp_path)
    before = _hashes(root)
    ds = ImageFolderDataset(root, progress=False)
    out = write_clean_manifest(tmp_path / "run", ds, flagged_keys=[1, 4])
    assert out.n_kept == 4 and out.n_flagged == 2
    assert read_index_list(out.clean_indices).tolist() == [0, 2, 3, 5]
    files = read_file_list(out.clean_manifest)
    assert [f.name for f in files] == ["cat 0.png", "cat 2.png", "dog 0.png", "dog 2.png"]
    tree = build_clean_tree(files, root, tmp_path / "clean", mode="symlink")
    assert sorted(p.name for p in tree.rglob("*.png")) == ["cat 0.png", "cat 2.png", "dog 0.png", "dog 2.png"]
    assert _hashes(root) == before


def test_manifest_cannot_escape_its_root(tmp_path):
    root = _folder(tmp_path)
    (tmp_path / "secret.txt").write_text("x")
    bad = tmp_path / "m.txt"
    bad.write_text(f"# root: {root}\ncat/cat 0.png\n../secret.txt\n")
    with pytest.raises(ManifestPathError, match="m.txt:3"):
        read_file_list(bad)
    bad.write_text("/etc/passwd\n")
    with pytest.raises(ManifestPathError):
        read_file_list(bad, root=root)
    assert read_file_list(bad, root=root, allow_outside=True)[0].name == "passwd"


def test_clean_tree_refuses_to_write_into_the_source(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(ValueError, match="must not be inside"):
        build_clean_tree([root / "cat" / "cat 0.png"], root, root / "clean")


def test_in_memory_dataset_gets_indices_only_and_unknown_flags_fail(tmp_path):
    ds = load_digits_dataset("test").subset(np.arange(10))
    out = write_clean_manifest(tmp_path, ds, flagged_keys=[ds.keys[0]])
    assert out.clean_manifest is None and len(read_index_list(out.clean_indices)) == 9
    with pytest.raises(KeyError):
        write_clean_manifest(tmp_path, ds, flagged_keys=[10**6])
    bad = tmp_path / "bad.txt"
    bad.write_text("3\nabc\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_index_list(bad)
