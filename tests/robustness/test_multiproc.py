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


def test_quickstart_under_torchrun_writes_the_same_scores_as_one_process(tmp_path):
    """The README's quickstart (`sslguard detect`, the digits with HTBA + BadNets) on 1 process trains an
    encoder; with that encoder fixed (``encoder=``), `torchrun --nproc_per_node 2 scripts/detect.py` runs every
    later stage on both processes (embedding, the SSL detectors' masking and paste tests, the classifier,
    the classifier-stage detectors; fusion and report on the main one) and must write byte-identical
    ``scores.csv``, flagged list, clean list and embeddings."""
    import csv
    import subprocess
    import sys

    from tests.multiproc import free_port
    from tests.robustness.killing import env

    base = [f"output_dir={tmp_path}"]
    one = subprocess.run([sys.executable, str(ROOT / "scripts" / "detect.py"), "--quiet", *base, "name=one"],
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    enc = tmp_path / "one" / "encoder.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(ROOT / "scripts" / "detect.py"), "--quiet", *base, f"encoder={enc}",
           "name=two"]
    two = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("report: ") == 1  # only the main process ran fusion and the report
    with open(tmp_path / "two" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    index = [int(r["index"]) for r in rows]
    assert len(index) == len(set(index)) and len(index) > 1000
    for col in ("poisoncam", "patchsearch", "activation_clustering", "spectral"):
        assert col in rows[0], col  # both SSL and classifier-stage detectors are in the comparison
    for name in ("scores.csv", "flagged.txt", "clean_indices.txt", "embeddings.npy", "embeddings_index.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
