"""Label-consistent backdoor (Turner, Tsipras & Madry 2019, "Label-Consistent Backdoor Attacks",
arXiv:1912.02771).

Target-class images keep their (correct) label, which defeats label-inspection defences. To make the
model rely on the trigger anyway, the images are first made hard to classify from their content: an
L-infinity PGD attack (Madry et al. 2018) against a given classifier maximises the loss of the true
label within ``epsilon``. A reduced-amplitude sticker is then stamped in all four corners (mirrored
into each corner, as in the paper) so that it survives flips and is faint to a person.

Sticker: for a pattern ``t`` in ``[0, 1]`` (default: Turner's 3x3 black/white checkerboard, enlarged
to the sticker size; or a user's ``trigger_path`` image divided by 255) each covered pixel becomes
``clip(round(x + amplitude * (2 t - 1)))``, so ``amplitude=255`` writes the pattern in pure black and
white, as the original BadNets-style trigger, and smaller amplitudes are the paper's reduced ones
(16, 32, 64).

Model contract: ``model`` maps a float ``(N, 3, H, W)`` batch normalised as
``(x / 255 - mean) / std`` (defaults ``0.5`` / ``0.5``, the same as
:func:`sslguard.data.transforms.to_float`) to ``(N, classes)`` logits. Without a model only the
sticker is applied.

Limits: the paper's other way of hiding content (GAN latent interpolation) is not implemented. The
PGD images live in this attack object (:meth:`LabelConsistent.prepare` runs once per poisoning, keyed
by dataset key, and :meth:`apply` finds them by the clean image's content): a manifest alone lets
you rebuild the sticker, but the adversarial part needs the same model and a new ``prepare``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.triggers import CORNERS, check_image, check_size_args, corner_box, load_trigger, patch_side

log = logging.getLogger(__name__)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


def checkerboard(width: int, height: int, cells: int = 3) -> np.ndarray:
    """Turner et al.'s sticker: a ``cells`` x ``cells`` checkerboard with white corners, values 0/1."""
    r = (np.arange(height) * cells) // height
    c = (np.arange(width) * cells) // width
    return ((r[:, None] + c[None, :] + 1) % 2).astype(np.float64)


def pgd_linf(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, epsilon: float, steps: int,
             step_size: float, mean: Sequence[float], std: Sequence[float], random_start: bool,
             generator: torch.Generator) -> np.ndarray:
    """Untargeted L-inf PGD on a ``uint8`` ``(N, H, W, 3)`` batch; returns ``uint8`` images within
    ``epsilon`` (pixel units) of the input. Gradients are taken w.r.t. the input only; the model's
    parameters and mode are left as they were."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x0 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    y = torch.as_tensor(labels, dtype=torch.long)
    eps, alpha = epsilon / 255.0, step_size / 255.0
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    x0, y = x0.to(device), y.to(device)
    x = x0.clone()
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=torch.float32) * 2 - 1
        x = (x0 + eps * noise.to(device)).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model((x - m) / s), y)
            (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x.detach() + alpha * grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
    out = (x.detach() * 255.0).round().clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()


@register_attack("label_consistent")
class LabelConsistent(Attack):
    """Adversarially perturbed target-class images with a faint four-corner sticker (Turner et al. 2019).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        model: classifier to attack with PGD (see the module docstring for its input); ``None``: sticker only.
        epsilon: L-inf radius of PGD in pixel values (0-255 scale; the paper uses 8 and 16).
        steps: PGD iterations.
        step_size: PGD step in pixel values; default ``2.5 * epsilon / steps`` (Madry et al.).
        random_start: start PGD from a seeded random point in the epsilon ball.
        amplitude: sticker amplitude in pixel values (255: full black/white).
        test_amplitude: amplitude used by :meth:`apply_test` (default: ``amplitude``).
        size_fraction / trigger_size: sticker side, as a fraction of the shorter side or in pixels.
        trigger_path: an image file used as the sticker pattern (its pixel values / 255).
        margin: gap between each sticker and the border.
        mean, std: the model's input normalisation.
        batch_size: images per PGD batch.
    """

    family = "label_consistent"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 model: torch.nn.Module | None = None, epsilon: float = 8.0, steps: int = 10,
                 step_size: float | None = None, random_start: bool = True, amplitude: float = 64.0,
                 test_amplitude: float | None = None, size_fraction: float = 3 / 32, trigger_size: int | None = None,
                 trigger_path: str | None = None, margin: int = 0, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), batch_size: int = 64):
        super().__init__(target, rate, rate_of, seed)
        check_size_args(size_fraction, trigger_size)
        if not 0.0 <= float(epsilon) <= 255.0:
            raise ValueError(f"epsilon must be in [0, 255] (pixel values), got {epsilon}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        for name, amp in (("amplitude", amplitude), ("test_amplitude", test_amplitude)):
            if amp is not None and not 0.0 < float(amp) <= 255.0:
                raise ValueError(f"{name} must be in (0, 255], got {amp}")
        if int(margin) < 0 or int(batch_size) < 1:
            raise ValueError(f"margin must be >= 0 and batch_size >= 1, got {margin}, {batch_size}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.epsilon = float(epsilon)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.epsilon / self.steps
        self.random_start = bool(random_start)
        self.amplitude = float(amplitude)
        self.test_amplitude = float(test_amplitude) if test_amplitude is not None else self.amplitude
        self.size_fraction = float(size_fraction)
        self.trigger_size = int(trigger_size) if trigger_size is not None else None
        self.trigger_path = str(trigger_path) if trigger_path is not None else None
        self.margin = int(margin)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.batch_size = int(batch_size)
        if self.trigger_path is not None:
            load_trigger(self.trigger_path, 1, 1)  # fail now, naming the file
        #: PGD output per dataset key, filled by :meth:`prepare`.
        self.perturbed: dict[int, np.ndarray] = {}
        self._key_of_clean: dict[str, int] = {}

    # ------------------------------------------------------------------ sticker
    def pattern(self, width: int, height: int) -> np.ndarray:
        """The sticker pattern in ``[0, 1]``, ``(height, width, 3)``, as placed in the top-left corner."""
        if self.trigger_path is not None:
            return load_trigger(self.trigger_path, width, height).astype(np.float64) / 255.0
        return np.repeat(checkerboard(width, height)[..., None], 3, axis=-1)

    def boxes(self, image_shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
        side = patch_side(image_shape, self.size_fraction, self.trigger_size)
        return [corner_box(image_shape, side, side, c, self.margin) for c in CORNERS]

    def stamp(self, image: np.ndarray, amplitude: float, boxes: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """``image`` with the sticker at ``amplitude`` in the four corners (CORNERS order)."""
        out = np.array(image, dtype=np.uint8, copy=True)
        for corner, (x, y, w, h) in zip(CORNERS, boxes if boxes is not None else self.boxes(image.shape)):
            t = self.pattern(int(w), int(h))
            if corner.endswith("right"):
                t = t[:, ::-1]
            if corner.startswith("bottom"):
                t = t[::-1]
            region = out[y:y + h, x:x + w].astype(np.float64) + amplitude * (2.0 * t - 1.0)
            out[y:y + h, x:x + w] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
        return out

    # ------------------------------------------------------------------ attack
    def prepare(self, dataset, positions: np.ndarray) -> None:
        """Run PGD once, in batches, over the images at ``positions`` (no-op without a model)."""
        self.perturbed, self._key_of_clean = {}, {}
        if self.model is None or len(positions) == 0:
            return
        was_training = self.model.training
        self.model.eval()
        gen = torch.Generator().manual_seed(self.seed)
        try:
            positions = [int(p) for p in positions]
            for start in range(0, len(positions), self.batch_size):
                chunk = positions[start:start + self.batch_size]
                by_shape: dict[tuple[int, ...], list[int]] = {}
                for p in chunk:
                    by_shape.setdefault(tuple(dataset.load_array(p).shape), []).append(p)
                for group in by_shape.values():
                    clean = np.stack([dataset.load_array(p) for p in group])
                    labels = np.asarray([int(dataset.labels[p]) for p in group])
                    adv = pgd_linf(self.model, clean, labels, self.epsilon, self.steps, self.step_size,
                                   self.mean, self.std, self.random_start, gen)
                    for p, c, a in zip(group, clean, adv):
                        key = int(dataset.keys[p])
                        self.perturbed[key] = a
                        self._key_of_clean[_digest(c)] = key
        finally:
            self.model.train(was_training)
        log.info("label_consistent: PGD (eps=%g, %d steps) on %d images", self.epsilon, self.steps, len(self.perturbed))

    def plan(self, image_shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
        return {"boxes": [list(b) for b in self.boxes(image_shape)]}

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        """PGD version of ``image`` when :meth:`prepare` made one, else ``image``; then the sticker."""
        image = check_image(image)
        key = self._key_of_clean.get(_digest(image)) if self._key_of_clean else None
        base = self.perturbed[key] if key is not None else image
        return self.stamp(base, self.amplitude, plan.get("boxes"))

    def apply_test(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The sticker alone at ``test_amplitude``: test inputs are not adversarially perturbed."""
        image = check_image(image)
        return self.stamp(image, self.test_amplitude)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "model": type(self.model).__name__ if self.model is not None else None,
                "epsilon": self.epsilon, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "amplitude": self.amplitude,
                "test_amplitude": self.test_amplitude, "size_fraction": self.size_fraction,
                "trigger_size": self.trigger_size, "trigger_path": self.trigger_path, "margin": self.margin,
                "mean": list(self.mean), "std": list(self.std)}
