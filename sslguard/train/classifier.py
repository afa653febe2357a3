"""Train and evaluate the downstream :class:`~sslguard.models.classifier.Classifier` (accelerate loop).

``train_classifier`` covers three set-ups on labeled data that may be poisoned and label-flipped:

- ``mode="scratch"``: every parameter trained from its initialisation (supervised baseline);
- ``mode="linear"``: a linear probe; the backbone is frozen (and kept in eval mode, so its BatchNorm
  statistics do not drift) and only the head learns;
- ``mode="finetune"``: everything learns, the backbone at ``backbone_lr_scale`` times the head's rate.

Extension points, so regularisers and repairs stay out of the loop body:

- ``loss_fn(model, images, labels, index) -> Tensor`` replaces the loss (default cross-entropy);
  ``images`` are the augmented, normalised float batch, ``index`` the dataset keys. Mixup, logit
  squeezing or a contrastive term are each a ``loss_fn``.
- ``on_step(step, model, batch_stats)`` / ``on_epoch_end(epoch, model, epoch_stats)`` are called on
  every process; a repair that must run after each epoch goes there.
- ``trainable(model)`` picks the parameters to optimise (a fine-tune repair of the head only, say).

``evaluate_classifier`` gives clean accuracy and attack success rate (ASR): the share of non-target
test images that, with the attack's test-time trigger, are classified as the attack's target.

The same code runs as plain ``python`` on one CPU and under ``accelerate launch`` (the loader is
sharded by accelerate; evaluation gathers by index through :func:`sslguard.embed.extract`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from sslguard.data.datasets import IndexedDataset
from sslguard.data.transforms import to_float, uint8_loader
from sslguard.utils.seed import seed_everything
from sslguard.models.classifier import predict

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MODES = ("scratch", "linear", "finetune")


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The default ``loss_fn``: mean cross-entropy of ``model(images)``."""
    return F.cross_entropy(model(images), labels)


# ------------------------------------------------------------------------------------ augmentation


def random_crop_flip(images: torch.Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip on a ``uint8`` ``(B, C, H, W)`` batch.

    Written with one gather instead of torchvision's per-image transforms, which work on one image
    at a time; offsets come from ``generator`` so a seed fixes the whole epoch's augmentation.
    """
    b, c, h, w = images.shape
    dev = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])  # (B, H)
        cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])  # (B, W)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        images = padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        do = torch.rand(b, generator=generator).to(dev) < 0.5
        images = torch.where(do[:, None, None, None], images.flip(-1), images)
    return images


# ---------------------------------------------------------------------------------------- training


@dataclass
class TrainHistory:
    """Per-epoch mean loss and training accuracy (on augmented batches; nan with a custom ``loss_fn``), plus wall time."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _set_mode(model: nn.Module, mode: str) -> None:
    """Train mode for what learns; a frozen backbone stays in eval mode (BatchNorm statistics fixed)."""
    model.train()
    if mode == "linear" and hasattr(model, "backbone"):
        model.backbone.eval()


def _param_groups(model: nn.Module, mode: str, lr: float, backbone_lr_scale: float,
                  trainable: Callable[[nn.Module], Iterable[nn.Parameter]] | None) -> list[dict[str, Any]]:
    if trainable is not None:
        params = [p for p in trainable(model) if p.requires_grad]
        return [{"params": params, "lr": lr}]
    if mode == "linear":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return [{"params": [p for p in model.head.parameters()], "lr": lr}]
    for p in model.parameters():
        p.requires_grad_(True)
    if mode == "finetune" and hasattr(model, "backbone"):
        head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        return [{"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale}, {"params": head, "lr": lr}]
    return [{"params": list(model.parameters()), "lr": lr}]


@dataclass
class _ClassifierLoop:
    """What the epochs of one :func:`train_classifier` call share: prepared objects, hooks and the step count."""

    model: nn.Module  # the caller's model (the hooks receive it)
    net: nn.Module  # the model as accelerate prepared it (``model`` itself without an accelerator)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loader: Any
    gen: torch.Generator  # this process's augmentation generator
    device: torch.device
    accelerator: Any
    augment: bool
    crop_padding: int
    loss_fn: LossFn | None
    on_step: Callable[[int, nn.Module, dict[str, float]], None] | None
    total_steps: int  # epochs * steps per epoch, the length of the LR schedule
    bar: Any = None  # the progress bar over all steps
    step: int = 0  # global step, counted over epochs


def _check_arguments(model: nn.Module, mode: str, epochs: int, optimizer: str) -> None:
    """Refuse an unknown mode or optimizer, no epochs, or a backbone mode on a model without a backbone."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if mode in ("linear", "finetune") and not hasattr(model, "backbone"):
        raise ValueError(f"mode={mode!r} needs a model with a .backbone (a Classifier)")


def _warmup_cosine(opt: torch.optim.Optimizer, warm: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warm`` steps, then cosine decay to zero at step ``total``."""

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def _prepare_loop(model: nn.Module, dataset: IndexedDataset, *, epochs: int, batch_size: int, lr: float, mode: str,
                  seed: int, accelerator, augment: bool, crop_padding: int, optimizer: str, momentum: float,
                  weight_decay: float, backbone_lr_scale: float, warmup_epochs: float, image_size: int | None,
                  num_workers: int, loss_fn: LossFn | None, trainable, on_step) -> _ClassifierLoop:
    """Parameter groups, optimiser, seeded loader, accelerate preparation, LR schedule and augmentation generator."""
    rank = accelerator.process_index if accelerator is not None else 0
    groups = _param_groups(model, mode, lr, backbone_lr_scale, trainable)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    loader = uint8_loader(dataset, batch_size, image_size, shuffle=True, num_workers=num_workers, drop_last=len(dataset) > batch_size, seed=seed)
    net = model
    if accelerator is not None:
        net, opt, loader = accelerator.prepare(model, opt, loader)
    steps_per_epoch = max(1, len(loader))
    total = epochs * steps_per_epoch
    sched = _warmup_cosine(opt, int(round(warmup_epochs * steps_per_epoch)), total)
    # One generator per process, so processes augment differently but reproducibly.
    gen = torch.Generator()
    gen.manual_seed(int(seed) * 1000 + 17 + rank)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    return _ClassifierLoop(model=model, net=net, opt=opt, sched=sched, loader=loader, gen=gen, device=device,
                           accelerator=accelerator, augment=augment, crop_padding=crop_padding, loss_fn=loss_fn,
                           on_step=on_step, total_steps=total)


def _train_step(loop: _ClassifierLoop, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
    """Augment, forward, backward, optimiser and scheduler step; returns the loss, predictions (or ``None``), labels."""
    images, labels = images.to(loop.device), labels.to(loop.device)
    if loop.augment:
        images = random_crop_flip(images, loop.crop_padding, True, loop.gen)
    x = to_float(images)
    pred = None
    if loop.loss_fn is not None:
        loss = loop.loss_fn(loop.net, x, labels, index)
    else:
        # The default path keeps the logits, so training accuracy costs no second forward
        # (a second forward in train mode would also update BatchNorm statistics twice).
        logits = loop.net(x)
        loss = F.cross_entropy(logits, labels)
        pred = logits.detach().argmax(1)
    loop.opt.zero_grad(set_to_none=True)
    if loop.accelerator is not None:
        loop.accelerator.backward(loss)
    else:
        loss.backward()
    loop.opt.step()
    loop.sched.step()
    return loss, pred, labels


def _run_epoch(loop: _ClassifierLoop, epoch: int) -> tuple[float, int, int]:
    """One pass over the loader; returns the summed loss, correct predictions and images seen."""
    run_loss, run_correct, run_n = 0.0, 0, 0
    for images, labels, index in loop.loader:
        loss, pred, labels = _train_step(loop, images, labels, index)
        n = len(labels)
        run_loss += float(loss.detach()) * n
        run_n += n
        if pred is not None:
            run_correct += int((pred == labels).sum())
        stats = {"loss": float(loss.detach()), "lr": float(loop.sched.get_last_lr()[-1])}
        if loop.on_step is not None:
            loop.on_step(loop.step, loop.model, stats)
        loop.step += 1
        loop.bar.update(1)
        loop.bar.set_postfix(epoch=epoch, loss=f"{stats['loss']:.3f}")
    return run_loss, run_correct, run_n


def _copy_back(model: nn.Module, net: nn.Module, accelerator) -> None:
    """Wait for every process, then copy the trained (unwrapped) weights into ``model`` if they live elsewhere."""
    if accelerator is not None:
        accelerator.wait_for_everyone()
        trained = accelerator.unwrap_model(net)
        if trained is not model:
            model.load_state_dict(trained.state_dict())


def train_classifier(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.05,
    mode: str = "scratch",
    seed: int = 0,
    accelerator=None,
    augment: bool = True,
    crop_padding: int = 4,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    backbone_lr_scale: float = 0.1,
    warmup_epochs: float = 0.0,
    image_size: int | None = None,
    num_workers: int = 0,
    loss_fn: LossFn | None = None,
    trainable: Callable[[nn.Module], Iterable[nn.Parameter]] | None = None,
    on_step: Callable[[int, nn.Module, dict[str, float]], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train ``model`` (a :class:`~sslguard.models.classifier.Classifier`) in place on ``dataset``'s labels.

    SGD with momentum (or ``optimizer="adamw"``), a linear warm-up then cosine decay per step, batched
    crop+flip augmentation on ``uint8`` tensors (``augment=False`` turns it off). Seeded: the same
    ``seed`` and process count give the same weights. With ``accelerator``, the model, optimiser and
    loader are prepared by accelerate (DDP across processes) and the trained weights are copied back
    into ``model`` on every process. Returns the per-epoch :class:`TrainHistory`.
    """
    import time

    from tqdm.auto import tqdm

    _check_arguments(model, mode, epochs, optimizer)
    seed_everything(seed)
    loop = _prepare_loop(
        model, dataset, epochs=epochs, batch_size=batch_size, lr=lr, mode=mode, seed=seed, accelerator=accelerator,
        augment=augment, crop_padding=crop_padding, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
        backbone_lr_scale=backbone_lr_scale, warmup_epochs=warmup_epochs, image_size=image_size,
        num_workers=num_workers, loss_fn=loss_fn, trainable=trainable, on_step=on_step,
    )
    rank = accelerator.process_index if accelerator is not None else 0
    history = TrainHistory()
    t0 = time.perf_counter()
    loop.bar = tqdm(total=loop.total_steps, desc=f"train ({mode})", disable=None if progress and rank == 0 else True, leave=False)
    for epoch in range(epochs):
        _set_mode(loop.net if accelerator is None else accelerator.unwrap_model(loop.net), mode)
        run_loss, run_correct, run_n = _run_epoch(loop, epoch)
        history.loss.append(run_loss / max(1, run_n))
        history.accuracy.append(float("nan") if loss_fn is not None else run_correct / max(1, run_n))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, {"loss": history.loss[-1], "epoch": epoch})
    loop.bar.close()
    _copy_back(model, loop.net, accelerator)
    model.eval()
    history.seconds = time.perf_counter() - t0
    return history


# -------------------------------------------------------------------------------------- evaluation


class TriggeredDataset(IndexedDataset):
    """``base`` items with the attack's test-time trigger (``attack.apply_test``); keys are kept.

    Each image gets its own generator seeded by ``(seed, key)``, so a triggered test set is the same
    whatever the order it is read in or the number of processes reading it.
    """

    def __init__(self, base: IndexedDataset, attack, seed: int = 0):
        self.base = base
        self.attack = attack
        self.seed = int(seed)
        self.labels = base.labels
        self.keys = base.keys
        self.classes = base.classes
        self.skipped = []

    def load_array(self, pos: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, int(self.keys[pos])])
        return self.attack.apply_test(self.base.load_array(pos), rng)

    def load_image(self, pos: int) -> Image.Image:
        return Image.fromarray(self.load_array(pos), mode="RGB")


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    test_dataset: IndexedDataset,
    attack=None,
    *,
    batch_size: int = 256,
    accelerator=None,
    image_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """``{"clean_acc", "asr"}`` on ``test_dataset``.

    ``clean_acc``: accuracy on the test images as they are. ``asr``: among test images whose true label
    is not ``attack.target``, the share classified as the target once the attack's test-time trigger is
    applied (``nan`` without an attack). Also returns ``n_clean`` and ``n_asr``.
    """
    _, logits = predict(model, test_dataset, batch_size=batch_size, accelerator=accelerator, image_size=image_size,
                        progress=progress)
    labels = np.asarray(test_dataset.labels)
    out = {"clean_acc": float((logits.argmax(1) == labels).mean()), "n_clean": int(len(labels)),
           "asr": float("nan"), "n_asr": 0}
    if attack is not None:
        non_target = np.flatnonzero(labels != attack.target)
        trig = TriggeredDataset(test_dataset.subset(non_target), attack, seed=seed)
        _, tl = predict(model, trig, batch_size=batch_size, accelerator=accelerator, image_size=image_size, progress=progress)
        out["asr"] = float((tl.argmax(1) == attack.target).mean())
        out["n_asr"] = int(len(non_target))
    return out
