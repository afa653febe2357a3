"""SIGKILL at a random moment of scripts/detect.py (embedding, clustering, detectors, classifier,
fusion, report; SSL training is test_faults_ssl.py), and artefacts damaged by hand: a rerun resumes and writes the same outputs as an
uninterrupted run; a partial or damaged file is never taken for a complete one."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from tests.robustness.killing import ROOT, kill_when, run

CONFIG = ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml"
OVERRIDES = ["data.subset_per_class=20", "data.image_size=16", "ssl.width=4", "ssl.epochs=2", "ssl.batch_size=32",
             "ssl.proj_dim=8", "ssl.hidden_dim=16", "cluster.k=5", "classifier.epochs=1", "classifier.width=4",
             "embed.batch_size=32", "detectors.batch_size=32", "report.top_k=2",
             "detectors.ssl=[poisoncam, patchsearch]", "detectors.classifier=[activation_clustering, spectral]",
             "fusion.detectors=null"]
# outputs that must be byte-identical (the others hold timings: summary.json, report.html, detectors/*.json)
SAME_BYTES = ["scores.csv", "flagged.txt", "clean_indices.txt", "embeddings.npy", "embeddings_index.npy",
              "clusters.npz", "dataset.json", "manifest.csv", "classifier.safetensors", "backdoor.json",
              "detectors/poisoncam.csv", "detectors/patchsearch.csv", "detectors/activation_clustering.csv",
              "detectors/spectral.csv"]


def _overrides(out, name) -> list[str]:
    return [*OVERRIDES, f"output_dir={out}", f"name={name}"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, in this process (run_pipeline is what scripts/detect.py calls)."""
    from sslguard.pipeline import load_detect_config, run_pipeline

    out = tmp_path_factory.mktemp("straight")
    run_pipeline(load_detect_config(CONFIG, _overrides(out, "run")), quiet=True)
    return out / "run"


def _stage_seconds(run_dir) -> dict[str, float]:
    return {json.loads(p.read_text())["stage"]: json.loads(p.read_text())["seconds"]
            for p in (run_dir / ".stages").glob("*.json")}


def _assert_same_outputs(a, b) -> None:
    from sslguard.models.ssl import read_backbone_meta

    for name in SAME_BYTES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # safetensors stores its metadata in hash-map order; the tensors (and their digest) must match
    assert read_backbone_meta(a / "encoder.safetensors")["sha256"] == read_backbone_meta(b / "encoder.safetensors")["sha256"]
    for name in ("poisoncam", "patchsearch", "activation_clustering", "spectral"):
        ja, jb = (json.loads((d / "detectors" / f"{name}.json").read_text()) for d in (a, b))
        assert ja["scores"] == jb["scores"] and ja["flagged"] == jb["flagged"], name


def _assert_nothing_partial(run_dir) -> None:
    """Every visible file of a killed run is complete, and every stage stamp matches its artefacts."""
    from sslguard.models.ssl import load_backbone
    from sslguard.pipeline import RunDir
    from sslguard.train.ssl import load_checkpoint

    for p in run_dir.rglob("*"):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(run_dir).parts):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npy":
            np.load(p)
        elif p.suffix == ".npz":
            with np.load(p) as z:
                [z[k] for k in z.files]
        elif p.suffix == ".safetensors" and p.name.startswith("encoder"):
            load_backbone(p)
    for p in run_dir.glob(".work/*/checkpoint.pt"):  # SSL training's epoch checkpoints
        load_checkpoint(p)
    rd = RunDir(run_dir, quiet=True)
    for stamp in (run_dir / ".stages").glob("*.json"):
        rec = json.loads(stamp.read_text())
        assert rd.valid(rec["stage"], rec["fingerprint"]), f"{stamp} names damaged artefacts"


def test_sigkill_at_random_moments_then_rerun_matches(straight, tmp_path):
    secs = _stage_seconds(straight)
    late = sum(v for k, v in secs.items() if k not in ("data", "encoder"))
    rng = np.random.default_rng(11)  # seeded kill moments
    cmd = [sys.executable, str(ROOT / "scripts" / "detect.py"), "--quiet", *_overrides(tmp_path, "run")]
    run_dir = tmp_path / "run"
    stamp = lambda stage: lambda: (run_dir / ".stages" / f"{stage}.json").exists()  # noqa: E731
    # killed at a seeded random moment between the encoder's commit and the end of the report (the
    # embedding, clustering, the four detectors, the classifier, fusion, report); SIGKILL during SSL
    # training itself is tests/robustness/test_faults_ssl.py
    killed = kill_when(cmd, stamp("encoder"), delay=rng.uniform(0.0, max(0.2, 0.75 * late)))
    assert killed, "the run finished before its kill; nothing was interrupted"
    _assert_nothing_partial(run_dir)
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / ".stages").glob("*.json")}
    run(cmd)
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / ".stages").glob("*.json")}
    assert any(after[k] == v for k, v in before.items()), "the rerun recomputed everything instead of resuming"
    _assert_same_outputs(straight, run_dir)


def test_damaged_artefacts_are_recomputed_never_trusted(straight, tmp_path, capsys):
    from sslguard.pipeline import load_detect_config, run_pipeline

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir, symlinks=True)
    half = lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # noqa: E731
    half(run_dir / "encoder.safetensors")  # a truncated checkpoint/encoder
    half(run_dir / "embeddings.npy")  # a truncated cache
    half(run_dir / "clusters.npz")
    (run_dir / "detectors" / "poisoncam.json").write_text('{"name": "poisoncam", "scores": [1.0, 2')
    (run_dir / ".stages" / "fuse.json").write_text('{"stage": "fuse", "finger')  # a stamp cut short
    (run_dir / ".scores.csv.x1y2.tmp").write_text("index,path\n0,half a row")  # a killed atomic write's temp file
    (run_dir / "scores.csv").write_text("index,path\n")  # and a scores.csv that does not match its stamp
    capsys.readouterr()
    run_pipeline(load_detect_config(CONFIG, _overrides(tmp_path, "run")), quiet=False)
    log = capsys.readouterr().err
    for stage in ("encoder", "embed", "cluster", "detector:poisoncam", "fuse"):
        assert f"[{stage}] running" in log, stage
    for stage in ("data", "classifier", "detector:spectral"):
        assert f"[{stage}] cached" in log, stage
    _assert_same_outputs(straight, run_dir)
