"""One process of the two-process CPU test (launched by test_distributed.py with torchrun's env vars).

Part 1: the NT-Xent loss and the DDP-averaged gradients for this rank's half of a fixed global batch
(BatchNorm in eval mode, so per-sample outputs do not depend on the split).
Part 2: a real ``train_ssl`` epoch on tiny digits across both processes.
Rank 0 writes ``result.pt`` (tensors only) into the folder given as argv[1].
"""

import os
import sys

import torch

torch.set_num_threads(1)


def fixed_model_and_views():
    from sslguard.models.ssl import build_ssl_model, make_backbone

    torch.manual_seed(0)
    model = build_ssl_model("simclr", make_backbone("convnet4", width=4), proj_dim=8, hidden_dim=16, temperature=0.5)
    g = torch.Generator().manual_seed(1)
    v0, v1 = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    return model.eval(), v0, v1


def main(out_dir: str) -> None:
    from accelerate import Accelerator

    from sslguard.data import load_digits_dataset
    from sslguard.models.ssl import build_ssl_model, make_backbone
    from sslguard.train.ssl import train_ssl

    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    rank = acc.process_index
    model, v0, v1 = fixed_model_and_views()
    ddp = acc.prepare(model)
    half = slice(4 * rank, 4 * rank + 4)
    loss = ddp(v0[half], v1[half])
    acc.backward(loss)
    loss_mean = acc.reduce(loss.detach(), reduction="mean")
    head_grad = acc.unwrap_model(ddp).projection_head.layers[0].weight.grad.clone()

    ds = load_digits_dataset("train", size=16).subset(range(64))
    torch.manual_seed(0)
    ssl = build_ssl_model("simclr", make_backbone("convnet4", width=4), proj_dim=8, hidden_dim=16)
    res = train_ssl(ssl, ds, epochs=1, batch_size=16, image_size=16, output_dir=os.path.join(out_dir, "run"),
                    seed=0, accelerator=acc, progress=False, checkpoint_every=1)
    flat = torch.cat([p.detach().flatten() for p in ssl.backbone.parameters()])
    flats = acc.gather(flat.view(1, -1))
    if acc.is_main_process:
        torch.save({"loss_mean": loss_mean, "local_loss": loss.detach(), "head_grad": head_grad,
                    "weights_per_rank": flats, "train_loss": torch.tensor(res.losses),
                    "steps": torch.tensor(res.global_step)}, os.path.join(out_dir, "result.pt"))
    acc.wait_for_everyone()


if __name__ == "__main__":
    from sslguard.cli import close_process_group

    main(sys.argv[1])
    close_process_group()
