"""The messy folder end to end: dataset -> embedding -> sanitising, with nothing lost.

Every readable file has exactly one embedding row and one line in the keep/flag lists; every
unreadable one is in ``dataset.skipped`` with its reason; readable + skipped = every candidate file.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from sslguard.data import ImageFolderDataset
from sslguard.embed import embed_dataset
from sslguard.models import create_backbone
from sslguard.sanitize import read_file_list, read_index_list, write_clean_manifest
from tests.robustness.messy import build_messy_folder


def _tree_hashes(root):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", str(p.readlink()))
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_messy_folder_through_dataset_embedding_and_sanitize(tmp_path):
    messy = build_messy_folder(tmp_path / "corpus")
    before = _tree_hashes(messy.root)
    ds = ImageFolderDataset(messy.root, num_workers=2, progress=False)

    torch.manual_seed(0)
    backbone = create_backbone("convnet4", width=4)
    keys, feats = embed_dataset(backbone, ds, batch_size=5, image_size=16, normalize=True,
                                cache_path=tmp_path / "emb.npz", progress=False)
    # one row per readable file, in dataset order, finite and normalised
    assert len(keys) == len(ds) == len(messy.good) and len(np.unique(keys)) == len(keys)
    assert np.array_equal(keys, ds.keys) and feats.shape == (len(ds), backbone.feature_dim)
    assert np.isfinite(feats).all() and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    rows = {messy.rel(ds.path(i)): i for i in range(len(ds))}
    assert set(rows) == set(messy.good)
    a, b = (rows[r] for r in messy.duplicates)
    assert np.allclose(feats[a], feats[b], atol=1e-6)  # duplicates: two rows, the same embedding

    # every bad file is listed with its reason; nothing is lost
    skipped = {messy.rel(s.path): s.reason for s in ds.skipped}
    assert set(skipped) == set(messy.bad)
    assert all(reason in skipped[rel] for rel, reason in messy.bad.items())
    assert len(rows) + len(skipped) == len(messy.candidates)

    # sanitise: flag a few (the unicode / spaces names among them); lists are complete and round-trip
    flag_rel = [r for r in rows if "unicode" in r or "spaces" in r or r.endswith("only.png")]
    flagged = sorted(rows[r] for r in flag_rel)
    out = write_clean_manifest(tmp_path / "run", ds, flagged_keys=ds.keys[flagged])
    clean = read_index_list(out.clean_indices).tolist()
    assert sorted(clean + flagged) == ds.keys.tolist() and not set(clean) & set(flagged)
    files = read_file_list(out.clean_manifest)
    assert len(files) == len(clean)
    assert {f.relative_to(messy.root.resolve()).as_posix() for f in files} == set(messy.good) - set(flag_rel)
    flagged_lines = out.flagged.read_text().splitlines()
    assert len(flagged_lines) == len(flagged)
    assert sorted(line.split("\t", 1)[1] for line in flagged_lines) == sorted(str(messy.root / r) for r in flag_rel)
    # the source tree is untouched
    assert _tree_hashes(messy.root) == before


def test_messy_folder_through_the_pipeline_lists_every_skip_in_the_report(tmp_path):
    """scripts/detect.py's pipeline on the messy folder (a given encoder, so no SSL training): one
    scores.csv row per readable file, and every skipped file with its reason in dataset.json,
    summary.json and report.html."""
    import csv
    import html
    import json

    from sslguard.models.ssl import make_backbone, save_backbone
    from sslguard.pipeline import load_detect_config, run_pipeline

    messy = build_messy_folder(tmp_path / "corpus")
    before = _tree_hashes(messy.root)
    torch.manual_seed(0)
    enc = save_backbone(tmp_path / "enc.safetensors", make_backbone("convnet4", width=4), {})
    cfg = load_detect_config(None, [
        "data.name=imagefolder", f"data.root={messy.root}", "data.test_split=null", "data.image_size=16", "attack=null",
        f"encoder={enc}", "cluster.k=3", "detectors.ssl=[poisoncam]", "detectors.classifier=[spectral, activation_clustering]",
        "classifier.epochs=1", "classifier.width=4", "report.top_k=2", f"output_dir={tmp_path / 'runs'}", "name=messy"])
    res = run_pipeline(cfg, quiet=True)
    run_dir = tmp_path / "runs" / "messy"

    with open(run_dir / "scores.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(messy.rel(r["path"]) for r in rows) == sorted(messy.good)  # each readable file exactly once
    assert sorted(int(r["index"]) for r in rows) == list(range(len(messy.good)))
    dataset = json.loads((run_dir / "dataset.json").read_text())
    listed = {messy.rel(s["path"]): s["reason"] for s in dataset["skipped"]}
    assert set(listed) == set(messy.bad) and all(r in listed[k] for k, r in messy.bad.items())
    assert res.summary["n_skipped_files"] == len(messy.bad)
    assert len(rows) + len(listed) == len(messy.candidates)  # nothing lost
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert f"Skipped input files ({len(messy.bad)})" in report
    for rel in messy.bad:
        assert html.escape(str(messy.root / rel)) in report, rel
    manifest = (run_dir / "clean_manifest.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert len(manifest) == len(res.clean_indices) and not any("\r" in line for line in manifest)
    assert _tree_hashes(messy.root) == before  # the source is read only
