"""Whole-image erasers: remove a *global* trigger the way a masked window removes a patch.

A blend, SIG or CTRL trigger is spread over the whole image, so no square window erases it (PoisonCAM's
*Limits*). What erases it is a filter that keeps the image's content and drops the band the trigger lives
in: additive noise blended in (Chen et al. 2017) and a sinusoid of a few pixels' period (SIG, Barni et al.
2019) are mostly fine detail, which a Gaussian low-pass removes; CTRL's trigger (Li et al. 2023) sits in the
high frequencies of the chroma channels, which a chroma-only low-pass removes while the luminance, where
most of an object's shape is, stays. Each eraser's *residual* (the image minus its erased copy) is then
the global analogue of a cropped window: added to another image, it carries the trigger with it, which
is how :mod:`sslguard.detectors.poisoncam` tests that what was erased is a trigger and not content.

The family (scaled with the image side, as measured on 32 px images):

- ``"lowpass"``: Gaussian blur, sigma = 1.5 px per 32 px of side (a sinusoid of period 5.3 px, SIG's
  6 periods on 32 px, keeps 21% of its amplitude; pixel noise keeps under 10% of its energy);
- ``"chroma"``: the same blur on the chroma channels (YCbCr, ITU-R BT.601) only.

Written here because torchvision's ``gaussian_blur`` covers the blur but has no luma/chroma split; the
blur itself is torchvision's.

Limits: a trigger in the low frequencies (a smooth colour cast, a large dim logo, a warp such as WaNet's)
survives both filters; a filter also erases real fine texture, so its residual carries a texture too
(the paste-style check, not the size of the drop, has to tell them apart).
"""

from __future__ import annotations

import torch
from torchvision.transforms.functional import gaussian_blur

ERASERS = ("lowpass", "chroma")
SIGMA_PER_32PX = 1.5

# ITU-R BT.601 full-range RGB <-> YCbCr (JPEG's); offsets dropped, the residual is a difference anyway
_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_FROM_YCC = torch.linalg.inv(_TO_YCC)


def _sigma(side: int) -> float:
    return SIGMA_PER_32PX * side / 32.0


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * int(round(3 * sigma)) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def erase(images_uint8: torch.Tensor, eraser: str) -> torch.Tensor:
    """Float (B, 3, H, W) copies of ``images_uint8`` with the ``eraser``'s band removed (unrounded)."""
    if eraser not in ERASERS:
        raise ValueError(f"eraser must be one of {ERASERS}, got {eraser!r}")
    x = images_uint8.float()
    sigma = _sigma(int(x.shape[-1]))
    if eraser == "lowpass":
        return _blur(x, sigma)
    to, back = _TO_YCC.to(x.device), _FROM_YCC.to(x.device)
    ycc = torch.einsum("ij,bjhw->bihw", to, x)
    ycc = torch.cat([ycc[:, :1], _blur(ycc[:, 1:], sigma)], dim=1)
    return torch.einsum("ij,bjhw->bihw", back, ycc)


def erased_uint8(images_uint8: torch.Tensor, eraser: str) -> torch.Tensor:
    """:func:`erase` rounded back to ``uint8`` images (what the encoder sees)."""
    return erase(images_uint8, eraser).round().clamp(0, 255).to(torch.uint8)


def residuals(images_uint8: torch.Tensor, eraser: str) -> torch.Tensor:
    """Float (B, 3, H, W): each image minus its erased copy, i.e. what the eraser took away."""
    return images_uint8.float() - erase(images_uint8, eraser)


def add_residuals(images_uint8: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """Each image with a residual added (``res`` of the same batch size, or one residual for all),
    rounded and clipped to ``uint8``: the global analogue of pasting a window."""
    return (images_uint8.float() + res).round().clamp(0, 255).to(torch.uint8)


def shared_share(x: torch.Tensor) -> float:
    """Share of the energy of a batch ``x`` (n, ...) that is one pattern common to all its items.

    With ``rho`` the energy of the batch mean over the items' mean energy, items ``s + u_i`` (one pattern ``s``,
    unrelated rest ``u_i``) give ``rho = f + (1 - f) / n`` where ``f`` is ``s``'s share; this returns
    ``(rho - 1/n) / (1 - 1/n)``, an estimate of ``f`` whatever ``n``: 1 for copies of one pattern, about 0
    for unrelated items. NaN for fewer than two items, 0 for an all-zero batch."""
    n = len(x)
    if n < 2:
        return float("nan")
    flat = x.flatten(1).double()
    energy = float(flat.pow(2).sum(1).mean())
    if energy == 0.0:
        return 0.0
    rho = float(flat.mean(0).pow(2).sum()) / energy
    return (rho - 1.0 / n) / (1.0 - 1.0 / n)
