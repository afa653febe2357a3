"""SimCLR/BYOL augmentations applied to whole batches on the training device.

The augmentations are those of SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning
of Visual Representations", appendix A) and BYOL (Grill et al. 2020, "Bootstrap Your Own Latent",
table 6): random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation, hue
in a random order), random greyscale, and at ImageNet size Gaussian blur and (BYOL's second view)
solarization. lightly's :class:`lightly.transforms.SimCLRTransform` is the reference; the tests check
that :class:`BatchAugment` draws from the same distributions.

Why not lightly's transforms: they run per image on PIL images in the loader, which caps CPU SimCLR
at about 170 images/s while a small ConvNet trains at about 1,500 images/s. Here every random
parameter is drawn per sample, vectorised on the CPU, and the pixel work runs batched on the images'
device (CPU or GPU).

Random streams: a batch's parameters come either from a seeded ``torch.Generator`` (``gen``: the
batch's draws depend on its size and order) or from per-image ``keys`` (:func:`view_keys` of seed,
epoch, image position and view). Keyed draws are a counter-based hash (splitmix64's finaliser of
``key + j * golden``, Steele et al. 2014, one counter ``j`` per parameter), so an image's view is a
function of its key alone: the same whichever batch, split or process it is augmented in. Training
(:func:`sslguard.train.ssl.train_ssl`) uses keys. The pixel work is per sample too (no kernel size or
reduction order depends on the rest of the batch), so a keyed view is bit-identical in any batch,
split or thread count on one machine and build (other CPUs or a GPU may round differently).

Limits: crops are resampled bilinearly with ``torchvision.ops.roi_align`` (which averages several
samples per output pixel when a crop is shrunk, a box-filter antialias rather than PIL's); jitter
runs on float images, so results differ from PIL's 8-bit arithmetic by rounding (<= 1/255 per op);
the blur kernel's radius is set by the largest sigma the view can draw (not the batch's), so small
sigmas get a wider, slightly more exact kernel than torchvision's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sslguard.data.transforms import DEFAULT_MEAN, DEFAULT_STD  # noqa: F401  (re-exported)

# ITU-R 601 luma weights, the ones torchvision's rgb_to_grayscale and PIL's "L" mode use.
_LUMA = (0.2989, 0.587, 0.114)

# Index of each jitter op in the per-sample order (torchvision ColorJitter's order of fn_idx).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch (CPU tensors of length N)."""

    crop: torch.Tensor  # (N, 4) float: x0, y0, w, h in input pixels (integers, as torchvision draws them)
    flip: torch.Tensor  # (N,) bool
    jitter: torch.Tensor  # (N,) bool: colour jitter applied
    factors: torch.Tensor  # (N, 4) float: brightness, contrast, saturation factors and hue shift
    order: torch.Tensor  # (N, 4) long: a permutation of the four jitter ops per sample
    gray: torch.Tensor  # (N,) bool
    blur: torch.Tensor  # (N,) bool
    sigma: torch.Tensor  # (N,) float
    solarize: torch.Tensor  # (N,) bool

    def to(self, device: torch.device | str) -> "AugmentParams":
        """The parameters on ``device``. To a GPU they travel as one pinned block in one asynchronous
        copy: nine plain ``.to()`` calls would each wait for the GPU to drain its queue (a copy from
        pageable memory synchronises), which leaves the GPU idle between training steps."""
        device = torch.device(device)
        if device.type == "cpu" or self.crop.device == device:
            return self
        packed = self.pack()
        if device.type == "cuda":
            packed = packed.pin_memory()
        return AugmentParams.unpack(packed.to(device, non_blocking=True))

    def pack(self) -> torch.Tensor:
        """All parameters as one ``(N, 18)`` float32 tensor (every value is exact in float32)."""
        cols = (self.crop, self.flip, self.jitter, self.factors, self.order, self.gray, self.blur, self.sigma,
                self.solarize)
        return torch.cat([c.reshape(len(self.crop), -1).float() for c in cols], dim=1)

    @staticmethod
    def unpack(packed: torch.Tensor) -> "AugmentParams":
        """The inverse of :meth:`pack`, on ``packed``'s device."""
        crop, flip, jit, fac, order, gray, blur, sigma, sol = packed.split([4, 1, 1, 4, 4, 1, 1, 1, 1], dim=1)
        return AugmentParams(crop, flip[:, 0] > 0.5, jit[:, 0] > 0.5, fac, order.long(), gray[:, 0] > 0.5,
                             blur[:, 0] > 0.5, sigma[:, 0], sol[:, 0] > 0.5)


# Uniform draws per sample and view: 10 crop tries x (area, log ratio), crop position (2), flip, jitter,
# four jitter factors, four order keys, grey, blur, sigma, solarize.
DRAWS_PER_VIEW = 36

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment, 2^64 / golden ratio


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a ``uint64`` array (wrapping arithmetic): a bijection that scrambles bits."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _as_u64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.atleast_1d(np.asarray(values)).astype(np.int64).astype(np.uint64)


def view_keys(seed: int, epoch: int, positions, view: int) -> np.ndarray:
    """Per-image stream keys (``uint64``) of ``positions`` (image positions in the training set) for
    ``view`` (0 or 1) of ``epoch``: a hash of ``(seed, epoch, view, position)``, one key per position."""
    h = np.zeros(1, dtype=np.uint64)
    for part in (seed, epoch, view):
        h = _mix64(h ^ _mix64(np.array([int(part) & _MASK64], dtype=np.uint64) + _GOLDEN))
    return _mix64(h ^ _mix64(_as_u64(positions) + _GOLDEN))


def keyed_uniforms(keys, k: int) -> torch.Tensor:
    """``(len(keys), k)`` float64 uniforms in [0, 1): row ``i`` is the first ``k`` outputs of a
    splitmix64 stream started at ``keys[i]``, so it depends on that key only (53-bit resolution)."""
    ctr = np.arange(1, k + 1, dtype=np.uint64) * _GOLDEN
    z = _mix64(_as_u64(keys)[:, None] + ctr[None, :])
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))


class _Draws:
    """Columns of float64 uniforms, one row per sample: fresh from ``gen``, or read off a keyed table."""

    def __init__(self, n: int, gen: torch.Generator | None, keys=None):
        self.n, self.gen, self.col = n, gen, 0
        self.table = None if keys is None else keyed_uniforms(keys, DRAWS_PER_VIEW)
        if self.table is not None and self.table.shape[0] != n:
            raise ValueError(f"got {self.table.shape[0]} keys for {n} images")

    def take(self, k: int) -> torch.Tensor:
        if self.table is None:
            return torch.rand(self.n, k, generator=self.gen, dtype=torch.float64)
        if self.col + k > self.table.shape[1]:
            raise RuntimeError("BatchAugment draws more than DRAWS_PER_VIEW uniforms per sample")
        self.col += k
        return self.table[:, self.col - k:self.col]

    def uniform(self, lo: float, hi: float) -> torch.Tensor:
        return self.take(1)[:, 0] * (hi - lo) + lo


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # torchvision's _blend with a per-sample factor (its functional ops take one scalar per call).
    return (f.view(-1, 1, 1, 1) * a + (1.0 - f.view(-1, 1, 1, 1)) * b).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    # torchvision's formulas (private there); needed because adjust_hue accepts only one scalar shift.
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = (i.to(torch.int64) % 6).unsqueeze(1)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # pick each channel's value by hue sector (a gather instead of torchvision's one-hot einsum: cheaper)
    r = torch.stack((v, q, p, p, t, v), dim=1).gather(1, i)
    g = torch.stack((t, v, v, q, p, p), dim=1).gather(1, i)
    b = torch.stack((p, p, t, v, v, q), dim=1).gather(1, i)
    return torch.cat((r, g, b), dim=1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Per-sample ``torchvision.transforms.functional.adjust_brightness`` on float images in [0, 1]."""
    return _blend(x, torch.zeros_like(x), f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Per-sample ``adjust_contrast``: blend with the image's mean grey level.

    The mean is taken over rows, then columns: a one-image reduction over all pixels would switch to a
    parallel summation order for large images, so the result would depend on the batch size."""
    mean = _grayscale(x).mean(dim=3, keepdim=True).mean(dim=(1, 2), keepdim=True)
    return _blend(x, mean.expand_as(x), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Per-sample ``adjust_saturation``: blend with the image's greyscale version."""
    return _blend(x, _grayscale(x).expand_as(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-sample ``adjust_hue``: rotate the hue by ``shift`` (in turns, within [-0.5, 0.5])."""
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """Per-sample Gaussian blur (separable, reflect padding), kernel radius ceil(3 * max_sigma).

    ``max_sigma`` defaults to the batch's largest sigma; pass a fixed bound so that an image's result
    does not depend on the other images of its batch."""
    n, c, hgt, wid = x.shape
    top = float(sigma.max()) if max_sigma is None else float(max_sigma)
    radius = max(1, min(int(math.ceil(3.0 * top)), min(hgt, wid) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2.0 * sigma.to(x.device, x.dtype).view(-1, 1) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    y = x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


class BatchAugment:
    """One SimCLR/BYOL view for a whole batch, with per-sample random parameters.

    Args mirror :class:`lightly.transforms.SimCLRViewTransform`: ``size`` (output side), crop
    ``scale``/``ratio`` ranges, ``hflip_prob``, ``cj_prob`` with ``brightness``/``contrast``/
    ``saturation``/``hue`` strengths (factors drawn from ``[1-s, 1+s]``, hue from ``[-h, h]``),
    ``gray_prob``, ``blur_prob`` with ``blur_sigma`` range, ``solarize_prob`` (BYOL), and the
    normalisation ``mean``/``std``.

    Call with a ``uint8`` (0..255) or float (0..1) batch ``(N, 3, H, W)`` on any device; returns a
    normalised float32 batch ``(N, 3, size, size)`` on that device.
    """

    def __init__(
        self,
        size: int,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_prob: float = 0.5,
        cj_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        gray_prob: float = 0.2,
        blur_prob: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_prob: float = 0.0,
        solarize_threshold: float = 0.5,
        mean: tuple[float, float, float] = DEFAULT_MEAN,
        std: tuple[float, float, float] = DEFAULT_STD,
    ):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        for name, p in (("hflip_prob", hflip_prob), ("cj_prob", cj_prob), ("gray_prob", gray_prob),
                        ("blur_prob", blur_prob), ("solarize_prob", solarize_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.size = int(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip_prob, self.cj_prob, self.gray_prob = hflip_prob, cj_prob, gray_prob
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.blur_prob, self.blur_sigma = blur_prob, tuple(blur_sigma)
        self.solarize_prob, self.solarize_threshold = solarize_prob, solarize_threshold
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        keys = ("size", "scale", "ratio", "hflip_prob", "cj_prob", "brightness", "contrast", "saturation", "hue",
                "gray_prob", "blur_prob", "blur_sigma", "solarize_prob")
        return f"BatchAugment({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    # ------------------------------------------------------------------------------ parameters
    def sample_crops(self, n: int, height: int, width: int, gen: torch.Generator | None = None, *,
                     keys=None) -> torch.Tensor:
        """``(n, 4)`` boxes ``x0, y0, w, h``: torchvision's RandomResizedCrop.get_params, vectorised.

        Ten tries per sample (area uniform in ``scale``, log aspect ratio uniform in ``ratio``); the
        first that fits is kept, else the central crop with the ratio clamped, exactly as torchvision.
        ``gen``/``keys``: the random stream, as in :meth:`sample`.
        """
        return self._crops(_Draws(n, gen, keys), n, height, width)

    def _crops(self, draws: _Draws, n: int, height: int, width: int) -> torch.Tensor:
        area = float(height * width)
        u = draws.take(20)
        target = area * (u[:, 0::2] * (self.scale[1] - self.scale[0]) + self.scale[0])
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(u[:, 1::2] * (hi - lo) + lo)
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.argmax(ok.to(torch.int8), dim=1)
        any_ok = ok.any(dim=1)
        w = w.gather(1, first.view(-1, 1)).squeeze(1)
        h = h.gather(1, first.view(-1, 1)).squeeze(1)
        u = draws.take(2)
        y0 = torch.floor(u[:, 0] * (height - h + 1))
        x0 = torch.floor(u[:, 1] * (width - w + 1))
        # fallback: central crop, aspect ratio clamped into the range
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = int(round(height * self.ratio[1])), height
        else:
            fw, fh = width, height
        fx, fy = (width - fw) // 2, (height - fh) // 2
        x0 = torch.where(any_ok, x0, torch.full_like(x0, fx))
        y0 = torch.where(any_ok, y0, torch.full_like(y0, fy))
        w = torch.where(any_ok, w, torch.full_like(w, fw))
        h = torch.where(any_ok, h, torch.full_like(h, fh))
        return torch.stack((x0, y0, w, h), dim=1).float()

    def sample(self, n: int, height: int, width: int, gen: torch.Generator | None = None, *,
               keys=None) -> AugmentParams:
        """Draw every random parameter of a batch of ``n`` images of ``height`` x ``width``.

        With ``keys`` (``n`` per-image keys, e.g. :func:`view_keys`) sample ``i``'s parameters are a
        function of ``keys[i]`` alone and ``gen`` is unused; else all are drawn from ``gen`` (or torch's
        global generator), so they depend on the batch's size and order."""
        d = _Draws(n, gen, keys)
        crop = self._crops(d, n, height, width)
        flip = d.take(1)[:, 0] < self.hflip_prob
        jitter = d.take(1)[:, 0] < self.cj_prob
        factors = torch.stack(
            [
                d.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness),
                d.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast),
                d.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation),
                d.uniform(-self.hue, self.hue),
            ],
            dim=1,
        ).float()
        order = torch.argsort(d.take(4), dim=1)  # a uniform random permutation per sample
        gray = d.take(1)[:, 0] < self.gray_prob
        blur = d.take(1)[:, 0] < self.blur_prob
        sigma = d.uniform(*self.blur_sigma).float()
        solarize = d.take(1)[:, 0] < self.solarize_prob
        return AugmentParams(crop, flip, jitter, factors, order, gray, blur, sigma, solarize)

    # ------------------------------------------------------------------------------ pixels
    def apply(self, images: torch.Tensor, p: AugmentParams, *, masked: bool | None = None) -> torch.Tensor:
        """Apply drawn parameters ``p`` to ``images`` (``uint8`` or float in [0, 1], ``(N, 3, H, W)``).

        ``masked`` (default: on a GPU) computes every op on the whole batch and keeps each sample's own
        result with ``torch.where``, instead of gathering the samples an op applies to: more arithmetic,
        but no step asks the host which samples those are, so the GPU never waits for the CPU (each
        gather is a host sync). On a CPU, where arithmetic is the cost, the gathers are cheaper. Both give
        the same images up to float rounding (tests/train/test_augment.py)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a batch (N, 3, H, W), got shape {tuple(images.shape)}")
        dev = images.device
        masked = images.is_cuda if masked is None else bool(masked)
        p = p.to(dev)
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        n = x.shape[0]
        boxes = torch.cat(
            [torch.arange(n, device=dev, dtype=x.dtype).view(-1, 1), p.crop[:, :2], p.crop[:, :2] + p.crop[:, 2:]],
            dim=1)
        # roi_align with aligned=True samples at pixel centres like a resize with align_corners=False;
        # sampling_ratio=-1 averages ceil(box/size) samples per output pixel when a crop shrinks.
        x = roi_align(x, boxes, output_size=(self.size, self.size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        x = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = self._jitter(x, p, masked)
        if masked or bool(p.gray.any()):
            x = torch.where(p.gray.view(-1, 1, 1, 1), _grayscale(x).expand_as(x), x)
        if self.blur_prob > 0 and masked:
            blurred = gaussian_blur(x, p.sigma, max_sigma=self.blur_sigma[1])
            x = torch.where(p.blur.view(-1, 1, 1, 1), blurred, x)
        elif self.blur_prob > 0 and bool(p.blur.any()):
            idx = torch.nonzero(p.blur).flatten()
            x[idx] = gaussian_blur(x[idx], p.sigma[idx], max_sigma=self.blur_sigma[1])
        if self.solarize_prob > 0:
            solar = torch.where(x >= self.solarize_threshold, 1.0 - x, x)
            x = torch.where(p.solarize.view(-1, 1, 1, 1), solar, x)
        # filled on the device: a tensor made from the Python tuple is copied from pageable memory, which
        # waits for the GPU's queue (twice a view, every step)
        mean = torch.stack([torch.full((), v, device=dev, dtype=x.dtype) for v in self.mean]).view(1, -1, 1, 1)
        std = torch.stack([torch.full((), v, device=dev, dtype=x.dtype) for v in self.std]).view(1, -1, 1, 1)
        return (x - mean) / std

    @staticmethod
    def _jitter(x: torch.Tensor, p: AugmentParams, masked: bool) -> torch.Tensor:
        """Colour jitter: each sample's four ops in its own random order (see :meth:`apply` for ``masked``)."""
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        if masked:
            for step in range(4):
                for op_id, op in enumerate(ops):
                    use = (p.jitter & (p.order[:, step] == op_id)).view(-1, 1, 1, 1)
                    x = torch.where(use, op(x, p.factors[:, op_id]), x)
            return x
        if not bool(p.jitter.any()):
            return x
        for step in range(4):
            for op_id, op in enumerate(ops):
                idx = torch.nonzero(p.jitter & (p.order[:, step] == op_id)).flatten()
                if idx.numel():
                    x[idx] = op(x[idx], p.factors[idx, op_id])
        return x

    def __call__(self, images: torch.Tensor, gen: torch.Generator | None = None, *, keys=None) -> torch.Tensor:
        """One view of ``images``; ``gen``/``keys`` choose the random stream as in :meth:`sample`."""
        return self.apply(images, self.sample(images.shape[0], images.shape[2], images.shape[3], gen, keys=keys))


def two_views(aug0: BatchAugment, aug1: BatchAugment, channels_last: bool, masked: bool | None = None):
    """``(images, params0, params1) -> (view0, view1)``: the pixel work of both views of a training step, one
    function so that ``torch.compile`` fuses it (compiled, pass ``masked=True``: no data-dependent shapes to
    break the graph; see :meth:`BatchAugment.apply`)."""

    def views(x: torch.Tensor, p0, p1) -> tuple[torch.Tensor, torch.Tensor]:
        v0, v1 = aug0.apply(x, p0, masked=masked), aug1.apply(x, p1, masked=masked)
        if channels_last:
            v0 = v0.contiguous(memory_format=torch.channels_last)
            v1 = v1.contiguous(memory_format=torch.channels_last)
        return v0, v1

    return views


# The recipe of ssl_augmentations. Every view: crop scale (min_scale or 0.08, 1), colour jitter with p=0.8 and
# greyscale with p=0.2 (BatchAugment's defaults). Jitter: brightness/contrast/saturation/hue strengths;
# blur and solarize: probabilities.
#
#   image size    method  view  jitter            blur  solarize
#   <= 64 px      simclr  both  0.4/0.4/0.4/0.1   0     0         (SimCLR appendix B.9: blur hurts at 32 px)
#   <= 64 px      byol    1     0.4/0.4/0.4/0.1   0     0
#   <= 64 px      byol    2     0.4/0.4/0.4/0.1   0     0.2
#   > 64 px       simclr  both  0.8/0.8/0.8/0.2   0.5   0         (Chen et al. 2020)
#   > 64 px       byol    1     0.4/0.4/0.2/0.1   1.0   0         (Grill et al. 2020, table 6)
#   > 64 px       byol    2     0.4/0.4/0.2/0.1   0.1   0.2


def ssl_augmentations(method: str, image_size: int, *, min_scale: float | None = None,
                      mean: tuple[float, float, float] = DEFAULT_MEAN,
                      std: tuple[float, float, float] = DEFAULT_STD) -> tuple[BatchAugment, BatchAugment]:
    """The two view augmentations of ``method`` (``simclr`` or ``byol``) for images of ``image_size``.

    Every view: random resized crop of scale ``(min_scale, 1)`` (``min_scale`` defaults to 0.08), flip,
    colour jitter (p=0.8) and greyscale (p=0.2). CIFAR-size images (<= 64 px) get no blur (SimCLR
    appendix B.9: blur hurts at 32 px) and BYOL adds solarization to its second view; at ImageNet size
    SimCLR uses stronger jitter and blur on both views, BYOL the views of Grill et al. 2020, table 6
    (blur on both, solarization on the second). Per-view values: the table in the comment above.
    ``mean``/``std`` is the normalisation.
    """
    scale = (0.08 if min_scale is None else float(min_scale), 1.0)
    small = image_size <= 64
    common = dict(scale=scale, mean=mean, std=std)
    if method == "simclr":
        if small:
            v = BatchAugment(image_size, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, **common)
        else:
            v = BatchAugment(image_size, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5,
                             **common)
        return v, v
    if method == "byol":
        if small:
            v1 = BatchAugment(image_size, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, **common)
            v2 = BatchAugment(image_size, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, solarize_prob=0.2,
                              **common)
        else:
            v1 = BatchAugment(image_size, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_prob=1.0,
                              **common)
            v2 = BatchAugment(image_size, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_prob=0.1,
                              solarize_prob=0.2, **common)
        return v1, v2
    raise ValueError(f"ssl.method: unknown method {method!r}; choose simclr or byol")
