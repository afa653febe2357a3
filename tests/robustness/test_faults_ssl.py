"""SIGKILL during SSL training (scripts/train_ssl.py): a rerun resumes and ends with the weights of an
uninterrupted run; whatever a killed run left behind is either complete or ignored."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from tests.robustness.killing import ROOT, kill_when, mtime, run

ARGS = ["data.subset_per_class=20", "data.image_size=16", "ssl.width=4", "ssl.epochs=6", "ssl.batch_size=32",
        "ssl.knn_every=0", "ssl.proj_dim=8", "ssl.hidden_dim=16", "ssl.checkpoint_every=1", "ssl.seed=5",
        "progress=false"]


def _cmd(out) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train_ssl.py"), *ARGS, f"output_dir={out}"]


def _assert_nothing_partial(out) -> None:
    """Every visible file a killed run left is complete; temp files are hidden (dot) names."""
    from sslguard.models.ssl import load_backbone
    from sslguard.train.ssl import load_checkpoint

    for p in out.iterdir():
        if p.name.startswith("."):
            continue
        if p.suffix == ".pt":
            load_checkpoint(p)
        elif p.suffix == ".safetensors":
            load_backbone(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".yaml":
            assert p.read_text().endswith("\n")


def test_sigkill_during_training_then_resume_matches_uninterrupted(tmp_path):
    from sslguard.config import TrainSSLConfig, load_config
    from sslguard.models.ssl import load_backbone
    from sslguard.pipeline.encoder import train_ssl_from_config

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run, in this process (the same library call the script makes)
    train_ssl_from_config(load_config(TrainSSLConfig, None, [*ARGS, f"output_dir={straight}"]))
    rng = np.random.default_rng(7)  # seeded kill moment: 0-0.3 s after the 2nd epoch's checkpoint lands
    ck = killed / "checkpoint.pt"
    first = []

    def after_two_checkpoints() -> bool:
        t = mtime(ck)
        if t is not None and t not in first:
            first.append(t)
        return len(first) >= 2

    was_killed = kill_when(_cmd(killed), after_two_checkpoints, delay=rng.uniform(0.0, 0.3))
    assert was_killed, "the run finished before it could be killed; the test did not exercise resume"
    _assert_nothing_partial(killed)
    assert not (killed / "encoder.safetensors").exists()  # the final artefact is not there half-made
    done = run(_cmd(killed))
    assert "resumed from" in done.stderr + done.stdout
    a, b = load_backbone(straight / "encoder.safetensors"), load_backbone(killed / "encoder.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k
    ha = json.loads((straight / "history.json").read_text())
    hb = json.loads((killed / "history.json").read_text())
    assert [r["epoch"] for r in hb] == list(range(1, 7))
    assert [r["loss"] for r in hb] == pytest.approx([r["loss"] for r in ha], rel=1e-5)
