"""WaNet (Nguyen & Tran, ICLR 2021, "WaNet - Imperceptible Warping-based Backdoor Attack"): a smooth,
fixed warping of the image, all-to-one with the label flipped to the target.

The warping field is drawn once from the attack's seed: a ``k`` x ``k`` grid of random 2-D offsets in
``[-1, 1]``, normalised by its mean absolute value, upsampled bicubically to the image size, scaled
by ``s / size`` and added to the identity sampling grid (clamped to ``[-1, 1]``); the image is
resampled with :func:`torch.nn.functional.grid_sample` (bilinear, ``align_corners=True``), as in the
authors' code. The field is the same for every image of a size, and the same at test time.

Limits: WaNet's "noise mode" (extra training images warped with a random field, kept at their true
label so the model learns the exact field) is not reproduced: it changes a training recipe, not the
poisoned images. For non-square images the offsets are scaled per axis (the paper's images are
square, where this equals its ``s / height``). Warping moves pixels everywhere, so the whole image may
change by a few grey levels; there is no location.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslguard.data.attacks.base import Attack, register_attack
from sslguard.data.attacks.triggers import check_image


@register_attack("wanet")
class WaNet(Attack):
    """Fixed smooth warp, label flipped to ``target`` (Nguyen & Tran 2021).

    Args:
        target, rate, rate_of, seed: see :class:`~sslguard.data.attacks.base.Attack`.
        k: side of the control grid (the paper uses 4 on CIFAR-10).
        s: warping strength (the paper uses 0.5).
        grid_rescale: factor on the warped grid before clamping (the authors' code uses 1).
    """

    family = "supervised"

    def __init__(self, target: int = 0, rate: float = 0.1, rate_of: str = "target", seed: int = 0,
                 k: int = 4, s: float = 0.5, grid_rescale: float = 1.0):
        super().__init__(target, rate, rate_of, seed)
        if int(k) < 2:
            raise ValueError(f"k must be >= 2 (a bicubic field needs a grid), got {k}")
        if float(s) <= 0:
            raise ValueError(f"s must be positive, got {s}")
        if float(grid_rescale) <= 0:
            raise ValueError(f"grid_rescale must be positive, got {grid_rescale}")
        self.k = int(k)
        self.s = float(s)
        self.grid_rescale = float(grid_rescale)
        rng = np.random.default_rng([self.seed, 7004])
        ins = rng.uniform(-1.0, 1.0, size=(1, 2, self.k, self.k))
        #: The seeded ``(1, 2, k, k)`` control grid; the whole attack is a function of it.
        self.control_grid = torch.from_numpy(ins / np.abs(ins).mean())
        self._grids: dict[tuple[int, int], torch.Tensor] = {}

    def sampling_grid(self, height: int, width: int) -> torch.Tensor:
        """The ``(1, height, width, 2)`` float64 grid handed to ``grid_sample`` for this size."""
        key = (int(height), int(width))
        if key not in self._grids:
            noise = F.interpolate(self.control_grid, size=key, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
            ys = torch.linspace(-1, 1, height, dtype=torch.float64)
            xs = torch.linspace(-1, 1, width, dtype=torch.float64)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            identity = torch.stack((gx, gy), dim=-1)[None]
            scale = torch.tensor([self.s / width, self.s / height], dtype=torch.float64)
            self._grids[key] = torch.clamp((identity + noise * scale) * self.grid_rescale, -1.0, 1.0)
        return self._grids[key]

    def warp_batch(self, images: np.ndarray) -> np.ndarray:
        """Warp a ``uint8`` ``(N, H, W, 3)`` batch of one size (what :meth:`apply` does, vectorised)."""
        images = np.asarray(images)
        n, h, w = images.shape[:3]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float64)
        grid = self.sampling_grid(h, w).expand(n, h, w, 2)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    def apply(self, image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
        image = check_image(image)
        return self.warp_batch(image[None])[0]

    def params(self) -> dict[str, Any]:
        return {**super().params(), "k": self.k, "s": self.s, "grid_rescale": self.grid_rescale}
