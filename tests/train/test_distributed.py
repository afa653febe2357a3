"""Two CPU processes (gloo) train without error, and SimCLR's loss covers the global batch."""

from pathlib import Path

import importlib.util

import torch

from tests.multiproc import run_script_distributed

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def fixed_model_and_views():
    spec = importlib.util.spec_from_file_location("sslguard_ddp_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.fixed_model_and_views()


def test_two_process_loss_equals_single_process_global_batch(tmp_path):
    run_script_distributed(WORKER, [str(tmp_path)], timeout=120)
    got = torch.load(tmp_path / "result.pt", weights_only=True)

    # one process, the whole global batch of 8
    model, v0, v1 = fixed_model_and_views()
    loss = model(v0, v1)
    loss.backward()
    assert torch.allclose(got["loss_mean"], loss.detach(), atol=1e-5), (got["loss_mean"], loss)
    # a process's own loss is over its 4 rows only: it differs from the global loss ...
    assert not torch.allclose(got["local_loss"], loss.detach(), atol=1e-4)
    # ... and a loss over only the local half (no gathering) would differ too: the negatives are global
    local_only = model.criterion.__class__(temperature=0.5)(model.project(v0[:4]), model.project(v1[:4]))
    assert not torch.allclose(local_only, got["local_loss"], atol=1e-4)
    # DDP-averaged gradients equal the gradient of the global loss
    ref_grad = model.projection_head.layers[0].weight.grad
    assert torch.allclose(got["head_grad"], ref_grad, atol=1e-5)

    # the real training loop ran on both processes, 64 images / batch 16 = 4 global steps, in sync
    assert int(got["steps"]) == 4
    assert torch.isfinite(got["train_loss"]).all()
    w = got["weights_per_rank"]
    assert w.shape[0] == 2 and torch.equal(w[0], w[1])
    assert (tmp_path / "run" / "encoder.safetensors").exists() and (tmp_path / "run" / "checkpoint.pt").exists()
