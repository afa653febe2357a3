"""The final filter shared by PatchSearch and PoisonCAM: a small poison classifier on pixels.

Tejankar et al. (CVPR 2023, PatchSearch) end their search by training a classifier that tells clean
images from clean images carrying one of the top-scored candidate trigger windows, then run it over the
whole corpus; Qian et al. (2023, PoisonCAM) end the same way with the windows that cluster activation
masking found. The search only has to find *a few* trigger windows; the classifier then finds the
trigger wherever it sits in every other image, which a per-image score cannot do when the encoder
reacts to the trigger in some poisons only weakly.

Limits: the classifier learns what the windows show. Windows that hold only a part of the trigger teach
that part; windows that are not triggers at all (a wrong cluster confirmed) teach an object part, and
the classifier then flags that part's images. Global triggers (blend, SIG, CTRL) fit no window: PoisonCAM
then passes the residuals of a whole-image eraser instead (``eraser``), which hold the trigger together with
the fine detail of the images they came from.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sslguard.data.transforms import to_float
from sslguard.erasers import add_residuals, residuals
from sslguard.models.backbones import create_backbone
from sslguard.utils.dist import broadcast_module


def crop_windows(images_uint8: torch.Tensor, boxes: np.ndarray) -> list[torch.Tensor]:
    """The (x, y, w, h) window ``boxes[j]`` of ``images[j]``, each as its own (3, h, w) copy."""
    return [images_uint8[j, :, int(y):int(y) + int(h), int(x):int(x) + int(w)].clone()
            for j, (x, y, w, h) in enumerate(np.asarray(boxes))]


def paste_many(targets_uint8: torch.Tensor, patches: list[torch.Tensor], at: np.ndarray) -> torch.Tensor:
    """Paste ``patches[j]`` (3, h, w) onto ``targets[j]`` at ``at[j]`` (x, y); returns a copy."""
    out = targets_uint8.clone()
    for j, p in enumerate(patches):
        x, y = int(at[j][0]), int(at[j][1])
        out[j, :, y:y + p.shape[1], x:x + p.shape[2]] = p
    return out


def paste_places(rng: np.random.Generator, patches: list[torch.Tensor], side: int) -> np.ndarray:
    """A random top-left corner (x, y) for each patch such that it fits a ``side`` x ``side`` image."""
    return np.asarray([[rng.integers(0, side - p.shape[2] + 1), rng.integers(0, side - p.shape[1] + 1)]
                       for p in patches], dtype=np.int64).reshape(-1, 2)


class PoisonClassifier(torch.nn.Module):
    """Small CNN (the repository's convnet4 at width 16 + a linear layer) for the final filter: the paper
    trains a ResNet-18, which would take longer than the whole search on a CPU."""

    def __init__(self, width: int = 16):
        super().__init__()

        self.body = create_backbone("convnet4", width=width)
        self.head = torch.nn.Linear(self.body.feature_dim, 1)

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(to_float(images_uint8)))[:, 0]


def train_poison_classifier(
    corpus,
    clean_pos: np.ndarray,
    patches: list[torch.Tensor],
    *,
    rng: np.random.Generator,
    epochs: int = 4,
    batch_size: int = 128,
    seed: int = 0,
    eraser: str | None = None,
) -> PoisonClassifier:
    """Train :class:`PoisonClassifier`: positives = clean images + a random patch of ``patches`` at a
    random place; negatives = the clean images as they are, and with a random window of another clean
    image pasted (a shortcut guard: without them a net may learn "any pasted square").

    With ``eraser`` (a global trigger, :mod:`sslguard.erasers`), ``patches`` are whole-image residuals: a
    positive is a clean image plus one of them, and the shortcut guard adds the residual of another clean
    image (what the eraser takes from any image: fine detail), so the net learns what the trigger's
    residuals share, not "added detail".
    """
    torch.manual_seed(seed)
    clf = PoisonClassifier().to(corpus.device)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    imgs = corpus.images(clean_pos)
    side = imgs.shape[-1]
    n = len(imgs)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            base = imgs[idx]
            m = len(idx)
            pick = rng.integers(0, len(patches), m)
            pp = [patches[i] for i in pick]
            if eraser is not None:
                pos = add_residuals(base, torch.stack(pp).to(base.device))
                neg_paste = add_residuals(base, residuals(imgs[rng.integers(0, n, m)], eraser))
            else:  # the draws in this order, as before the erasers
                pos = paste_many(base, pp, paste_places(rng, pp, side))
                donors = imgs[rng.integers(0, n, m)]
                rand_patches = crop_windows(donors, [(x, y, p.shape[2], p.shape[1])
                                                     for (x, y), p in zip(paste_places(rng, pp, side), pp)])
                neg_paste = paste_many(base, rand_patches, paste_places(rng, pp, side))
            x = torch.cat([pos, base, neg_paste])
            y = torch.cat([torch.ones(m), torch.zeros(2 * m)]).to(x.device)
            w = torch.cat([torch.full((m,), 2.0), torch.ones(2 * m)]).to(x.device)  # balance the two classes
            clf.train()
            loss = F.binary_cross_entropy_with_logits(clf(x), y, weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
    # every process trained the same copy; keep the main one's, so later collective steps agree
    return broadcast_module(clf, corpus.accelerator).eval()


@torch.no_grad()
def classifier_logits(clf: PoisonClassifier, corpus, positions: np.ndarray) -> np.ndarray:
    """The poison classifier's logit for every image at ``positions`` (split across processes by batch)."""
    def one(s: int) -> np.ndarray:
        return clf(corpus.images(positions[s:s + corpus.batch_size])).double().cpu().numpy()

    starts = list(range(0, len(positions), corpus.batch_size))
    parts = corpus.map(one, starts)
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)
