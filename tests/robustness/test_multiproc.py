"""Two CPU processes (torchrun + gloo): detectors give exactly one score per index, the same on every
process and the same as one process, on a dataset whose size is not a multiple of the global batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.multiproc import run_distributed

ROOT = Path(__file__).resolve().parents[2]
N, BATCH = 53, 4  # 53 images, 2 processes x batch 4: uneven shards and a short last batch on each
KWARGS = {"activation_clustering": {"seed": 0}, "spectral": {}}


def _dataset():
    from sslguard.data import load_digits_dataset

    # reversed, non-contiguous keys: a position/key mix-up cannot go unnoticed
    return load_digits_dataset("test", size=16).subset(np.arange(3 * N - 1, -1, -3)[:N].copy())


def _model():
    import torch

    from sslguard.models.classifier import build_classifier

    torch.manual_seed(0)
    return build_classifier("convnet4", 10, width=4, seed=0).eval()


def test_two_processes_score_every_index_once(tmp_path):
    code = f"""
    import sys, numpy as np
    sys.path.insert(0, {str(ROOT)!r})
    from accelerate import Accelerator
    from sslguard.detectors import get_detector
    from tests.robustness.test_multiproc import KWARGS, _dataset, _model
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    ds, model = _dataset(), _model()
    out = {{}}
    for name, kw in KWARGS.items():
        r = get_detector(name)(model, ds, batch_size={BATCH}, image_size=16, accelerator=acc, **kw)
        out[name + "_index"], out[name + "_scores"], out[name + "_flagged"] = r.index, r.scores, r.flagged
    np.savez(sys.argv[1] + f"/rank{{acc.process_index}}.npz", **out)
    """
    run_distributed(code, tmp_path, args=[str(tmp_path)])
    from sslguard.detectors import get_detector

    ds, model = _dataset(), _model()
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    for name, kw in KWARGS.items():
        single = get_detector(name)(model, ds, batch_size=BATCH, image_size=16, **kw)
        for got in ranks:
            index = got[f"{name}_index"]
            assert len(index) == N and len(np.unique(index)) == N  # no duplicates, none missing
            assert np.array_equal(index, ds.keys) and np.array_equal(single.index, ds.keys)
            assert np.isfinite(got[f"{name}_scores"]).all()
            np.testing.assert_allclose(got[f"{name}_scores"], single.scores, atol=1e-4)
            assert np.array_equal(got[f"{name}_flagged"], single.flagged)
        np.testing.assert_array_equal(ranks[0][f"{name}_scores"], ranks[1][f"{name}_scores"])


def test_pipeline_under_torchrun_writes_one_row_per_index_like_one_process(tmp_path):
    """scripts/detect.py on 2 processes (torchrun): the embedding is shared, the later stages run on the
    main process only; scores.csv has one row per index and is byte-identical to a one-process run.
    200 images, embed.batch_size 16: 100 per process, a short last batch on each."""
    import csv
    import subprocess
    import sys

    import torch

    from sslguard.models.ssl import make_backbone, save_backbone
    from sslguard.pipeline import load_detect_config, run_pipeline
    from tests.multiproc import free_port
    from tests.robustness.killing import env

    torch.manual_seed(0)
    enc = save_backbone(tmp_path / "enc.safetensors", make_backbone("convnet4", width=4), {})  # no SSL training here
    ov = [f"encoder={enc}", "data.subset_per_class=20", "data.image_size=16", "cluster.k=5", "embed.batch_size=16",
          "detectors.ssl=[poisoncam]", "detectors.classifier=[spectral]", "fusion.detectors=null", "classifier.epochs=1",
          "classifier.width=4", "report.top_k=0", f"output_dir={tmp_path}"]
    cfg = ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(ROOT / "scripts" / "detect.py"), "--quiet", "--config", str(cfg),
           *ov, "name=two"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("report: ") == 1  # only the main process ran the single-process stages
    run_pipeline(load_detect_config(cfg, [*ov, "name=one"]), quiet=True)
    with open(tmp_path / "two" / "scores.csv", newline="") as fh:
        index = [int(r["index"]) for r in csv.DictReader(fh)]
    assert len(index) == 200 and sorted(index) == sorted(set(index))
    for name in ("scores.csv", "embeddings.npy", "embeddings_index.npy", "clean_indices.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
