"""Short SSL trainings whose loss curves are compared between 1 and 2 processes (test_process_invariance.py).

:func:`run_cases` trains the given cases on the current process group (one process when called from
pytest, two under torchrun) and returns per-case losses and final weights. Run as a script (argv[1]: a
folder), it is one process of the two-process run; rank 0 writes ``result.pt`` there (tensors only).
"""

import os
import sys

import torch

# name: (method, keep BatchNorm, seed, lr). Without BatchNorm this SimCLR sits near the chance loss, where a
# larger step amplifies float rounding (normalising near-equal projections); 0.005 keeps it well conditioned.
CASES = {
    "simclr": ("simclr", True, 5, 0.05),  # the real model: BatchNorm statistics are per process
    "simclr_nobn": ("simclr", False, 5, 0.005),  # BatchNorm swapped for per-sample norms: nothing depends on the split
    "byol_nobn": ("byol", False, 5, 0.05),
}
# other order and views (one process only): how far apart runs that do NOT see the same data are
CONTROLS = {"simclr_nobn_seed6": ("simclr", False, 6, 0.005), "byol_nobn_seed6": ("byol", False, 6, 0.05)}
BATCH = 64  # global batch: 32 images per process under two processes
N_IMAGES = 3 * BATCH  # 3 global steps per epoch
KW = dict(epochs=3, batch_size=BATCH, image_size=16, progress=False, checkpoint_every=0)


def per_sample_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm layer (the one per-process statistic of the models) by a per-sample one:
    ``BatchNorm2d(c)`` by ``GroupNorm(1, c)``, ``BatchNorm1d(d)`` by ``LayerNorm(d)``, same affine flag."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.GroupNorm(1, child.num_features, affine=child.affine))
        elif isinstance(child, torch.nn.BatchNorm1d):
            setattr(module, name, torch.nn.LayerNorm(child.num_features, elementwise_affine=child.affine))
        else:
            per_sample_norms(child)
    return module


def build(method: str, batchnorm: bool) -> torch.nn.Module:
    from sslguard.models.ssl import build_ssl_model, make_backbone

    torch.manual_seed(0)
    model = build_ssl_model(method, make_backbone("convnet4", width=4), proj_dim=8, hidden_dim=16)
    if not batchnorm:
        per_sample_norms(model)
        for name in ("backbone_momentum", "projection_head_momentum"):  # BYOL's EMA copies take no gradient
            for p in getattr(model, name, torch.nn.Module()).parameters():
                p.requires_grad_(False)
    return model


def run_cases(cases: dict, accelerator=None) -> dict[str, torch.Tensor]:
    """``{name: per-epoch losses}`` and ``{name + "_weights": flat parameters}`` of every case."""
    from sslguard.data import load_digits_dataset
    from sslguard.train.ssl import train_ssl

    ds = load_digits_dataset("train", size=16).subset(range(N_IMAGES))
    out = {}
    for name, (method, batchnorm, seed, lr) in cases.items():
        model = build(method, batchnorm)
        res = train_ssl(model, ds, seed=seed, lr=lr, accelerator=accelerator, **KW)
        out[name] = torch.tensor(res.losses, dtype=torch.float64)
        out[name + "_weights"] = torch.cat([p.detach().flatten() for p in model.parameters()])
    return out


def main(out_dir: str) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    result = run_cases(CASES, acc)
    for name in CASES:  # both processes hold the same weights (DDP keeps them in sync)
        both = acc.gather(result[name + "_weights"].view(1, -1))
        assert torch.equal(both[0], both[1]), name
    if acc.is_main_process:
        torch.save(result, os.path.join(out_dir, "result.pt"))
    acc.wait_for_everyone()


if __name__ == "__main__":
    from sslguard.cli import close_process_group

    torch.set_num_threads(1)
    main(sys.argv[1])
    close_process_group()
