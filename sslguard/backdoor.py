"""Did an encoder learn a backdoor? kNN target rate of triggered test images vs controls.

An SSL backdoor (Saha et al. 2022, "Backdoor Attacks on Self-Supervised Learning") makes the
encoder map any image carrying the trigger near the target class's poisoned images. The project's
test: embed the labeled training set (the kNN bank) and the *non-target-class* test images three
ways (clean; with the attack's test-time trigger, ``attack.apply_test``; with a random-noise patch of
the same size at a random place) and report the share that weighted kNN (:mod:`sslguard.knn`)
assigns to the target class. A backdoor shows as ``triggered`` well above both ``random_patch``
(any patch occludes) and ``clean``, and above the same rate for an encoder trained on clean data.

Limits: the rate depends on the kNN bank (use the clean training set or a labeled subset of it);
with few test images per class the rates are noisy (``n_test`` is reported so intervals can be
drawn); the random patch is i.i.d. uniform noise, which is one control among several possible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from sslguard.data.datasets import IndexedDataset
from sslguard.knn import extract_features, knn_predict
from sslguard.data.transforms import DEFAULT_MEAN, DEFAULT_STD


@dataclass
class BackdoorRates:
    """kNN target rates on non-target test images (fractions in [0, 1])."""

    triggered: float
    random_patch: float
    clean: float
    n_test: int
    target: int
    k: int
    patch_size: tuple[int, int]

    @property
    def lift(self) -> float:
        """How much the trigger raises the target rate over a same-size random patch."""
        return self.triggered - self.random_patch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lift"] = self.lift
        return d

    # mapping protocol, so ``dict(rates)`` gives :meth:`to_dict`
    def keys(self):
        return self.to_dict().keys()

    def __getitem__(self, key: str):
        return self.to_dict()[key]


class _Images(IndexedDataset):
    """A list of ``uint8`` HWC arrays as an indexed dataset (sizes may differ; the loader resizes)."""

    def __init__(self, arrays: list[np.ndarray], labels: np.ndarray, keys: np.ndarray):
        self.arrays, self.labels, self.keys = arrays, np.asarray(labels, np.int64), np.asarray(keys, np.int64)
        self.classes, self.skipped = [], []

    def load_image(self, pos: int) -> Image.Image:
        return Image.fromarray(self.arrays[pos], mode="RGB")

    def load_array(self, pos: int) -> np.ndarray:
        return self.arrays[pos]


def random_patch(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Copy of ``image`` with a ``(w, h)`` square of i.i.d. uniform random colours at a random place."""
    h_img, w_img = image.shape[:2]
    w, h = min(size[0], w_img), min(size[1], h_img)
    x = int(rng.integers(0, w_img - w + 1))
    y = int(rng.integers(0, h_img - h + 1))
    out = image.copy()
    out[y:y + h, x:x + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return out


def _patch_size_of(attack, shape: tuple[int, ...]) -> tuple[int, int]:
    plan = attack.plan(shape, np.random.default_rng(0))
    loc = plan.get("location")
    if loc is None:
        raise ValueError(f"attack {getattr(attack, 'name', attack)!r} reports no patch location; pass patch_size")
    return int(loc[2]), int(loc[3])


def control_patch_size(attack, image_size: int) -> int | tuple[int, int]:
    """Side of the random-patch control for ``attack`` on ``image_size`` px images: the attack's own patch
    size, or a quarter of the side for a global trigger (blend, SIG, CTRL, WaNet), which has none. The
    control asks "does any perturbation pull images to the target?"; for a global trigger a quarter-side
    patch is a perturbation of the same order as the papers' patch triggers (8 px on 32)."""
    try:
        return _patch_size_of(attack, (int(image_size), int(image_size), 3))
    except (ValueError, KeyError, TypeError):
        return max(1, int(image_size) // 4)


@torch.no_grad()
def triggered_target_rate(
    backbone: torch.nn.Module,
    train_ds: IndexedDataset,
    test_ds: IndexedDataset,
    attack,
    target: int | None = None,
    k: int = 200,
    t: float = 0.1,
    patch_size: int | tuple[int, int] | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    max_test: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    mean=DEFAULT_MEAN,
    std=DEFAULT_STD,
) -> BackdoorRates:
    """kNN target rate of ``test_ds``'s non-target images: triggered, random patch, clean.

    ``train_ds`` (labeled) is the kNN bank. ``target`` defaults to ``attack.target``.
    ``attack.apply_test(image, rng)`` adds the trigger;
    ``patch_size`` (side or ``(w, h)``) defaults to the size of the attack's planned patch.
    ``max_test`` caps the number of test images (a seeded sample). ``image_size``, ``mean`` and
    ``std`` must match the encoder's training (see its ``encoder_meta``).
    """
    return triggered_target_rates(backbone, {"bank": train_ds}, test_ds, attack, target, k=k, t=t,
                                  patch_size=patch_size, image_size=image_size, batch_size=batch_size,
                                  max_test=max_test, seed=seed, device=device, mean=mean, std=std)["bank"]


@torch.no_grad()
def triggered_target_rates(backbone: torch.nn.Module, banks: dict[str, IndexedDataset], test_ds: IndexedDataset,
                           attack, target: int | None = None, k: int = 200, t: float = 0.1,
                           patch_size: int | tuple[int, int] | None = None, image_size: int | None = None,
                           batch_size: int = 256, max_test: int | None = None, seed: int = 0,
                           device: str | torch.device | None = None, mean=DEFAULT_MEAN,
                           std=DEFAULT_STD) -> dict[str, BackdoorRates]:
    """:func:`triggered_target_rate` against several kNN ``banks`` (name -> labeled dataset): the clean,
    triggered and random-patch test images are built and embedded once, each bank once."""
    target = int(attack.target) if target is None else int(target)
    if not all(b.has_labels for b in banks.values()) or not test_ds.has_labels:
        raise ValueError("triggered_target_rate needs labeled train and test datasets")
    rng = np.random.default_rng([seed, 7])
    pos = np.flatnonzero(test_ds.labels != target)
    if max_test is not None and len(pos) > max_test:
        pos = np.sort(rng.choice(pos, size=max_test, replace=False))
    if len(pos) == 0:
        raise ValueError(f"test set has no images outside the target class {target}")
    clean = [np.asarray(test_ds.load_array(int(p)), dtype=np.uint8) for p in pos]
    if patch_size is None:
        size = _patch_size_of(attack, clean[0].shape)
    else:
        size = (int(patch_size), int(patch_size)) if np.isscalar(patch_size) else tuple(int(v) for v in patch_size)
    trig_rng, patch_rng = np.random.default_rng([seed, 8]), np.random.default_rng([seed, 9])
    triggered = [np.asarray(attack.apply_test(img, trig_rng), dtype=np.uint8) for img in clean]
    patched = [random_patch(img, size, patch_rng) for img in clean]
    labels, keys = test_ds.labels[pos], test_ds.keys[pos]
    kw = dict(batch_size=batch_size, image_size=image_size, device=device, mean=mean, std=std)
    feats = {name: extract_features(backbone, _Images(arrays, labels, keys), **kw)[0]
             for name, arrays in (("clean", clean), ("triggered", triggered), ("random_patch", patched))}
    out = {}
    for bank_name, train_ds in banks.items():
        bank, bank_labels, _ = extract_features(backbone, train_ds, **kw)
        n_cls = int(max(bank_labels.max(), target)) + 1
        rates = {name: float((knn_predict(bank, bank_labels, f, k=k, t=t, num_classes=n_cls) == target).float().mean())
                 for name, f in feats.items()}
        out[bank_name] = BackdoorRates(triggered=rates["triggered"], random_patch=rates["random_patch"],
                                       clean=rates["clean"], n_test=len(pos), target=int(target),
                                       k=int(min(k, len(bank))), patch_size=size)
    return out
