"""Batched Grad-CAM on the *cluster model* of an SSL encoder, and the most activating window.

The cluster model (PatchSearch, Tejankar et al., CVPR 2023, Sec. 3.1; reused by PoisonCAM, Qian et al.,
2023) scores an image by the cosine similarity of its L2-normalised embedding to each k-means centroid.
Grad-CAM (Selvaraju et al., ICCV 2017) of the assigned cluster's score, taken at the backbone's last
stage feature map, shows which region put the image into its cluster; for a patch-poisoned image that
is, ideally, the trigger.

Only the small head after the feature map (pool -> normalise -> cosine) needs gradients, so the
feature map is computed without autograd and then made a leaf: the gradient w.r.t. the map is exactly
Grad-CAM's, without a backward pass through the backbone. This is what makes CAM on 50k images cheap.

Limits: a Grad-CAM heatmap is as coarse as the last feature map (4x4 for convnet4 on 32 px, so a
window is located to within ~8 px), and it can only point at what the encoder attends to: if the
encoder did not learn the trigger, the window lands on the object instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sslguard.data.transforms import ResizeUint8, to_float
from sslguard.utils.dist import map_chunks


class ClusterModel(torch.nn.Module):
    """backbone -> L2-normalised embedding -> cosine similarity to (normalised) centroids, (B, k).

    ``features_and_scores`` also returns the last-stage map as a leaf tensor for Grad-CAM.
    Images come in as ``uint8`` (B, 3, H, W) batches and are normalised like :func:`sslguard.embed.embed_dataset`.
    """

    def __init__(self, backbone: torch.nn.Module, centroids: np.ndarray | torch.Tensor):
        super().__init__()
        self.backbone = backbone
        c = torch.as_tensor(np.asarray(centroids, dtype=np.float32))
        self.register_buffer("centroids", F.normalize(c, dim=1))

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def _timm(self) -> bool:
        return hasattr(self.backbone, "model") and hasattr(self.backbone.model, "forward_head")

    def _raw_features(self, x: torch.Tensor) -> torch.Tensor:
        if self._timm():
            return self.backbone.model.forward_features(x)
        return self.backbone.forward_features(x)

    def _head(self, raw: torch.Tensor) -> torch.Tensor:
        if self._timm():
            return self.backbone.model.forward_head(raw, pre_logits=True)
        return self.backbone.pool(raw)

    def _as_map(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) view of the raw features (ViT tokens folded into a square map)."""
        if raw.ndim == 4:
            return raw
        n_prefix = getattr(self.backbone.model, "num_prefix_tokens", 1)
        tokens = raw[:, n_prefix:]
        side = int(round(tokens.shape[1] ** 0.5))
        return tokens.transpose(1, 2).reshape(raw.shape[0], raw.shape[2], side, side)

    def scores_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self._head(raw), dim=1)
        return emb @ self.centroids.T

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.scores_from_raw(self._raw_features(to_float(images_uint8)))

    @torch.no_grad()
    def embed(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings (B, D)."""
        return F.normalize(self._head(self._raw_features(to_float(images_uint8))), dim=1)


def grad_cam(model: ClusterModel, images_uint8: torch.Tensor, targets: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of cluster ``targets`` (default: the assigned cluster) for a batch.

    Returns ``(heatmaps (B, H, W) upsampled to image size, scores (B, k), targets (B,))``.
    Heatmaps are ReLU'd and not normalised (so masses are comparable within one image).
    """
    with torch.no_grad():
        raw = model._raw_features(to_float(images_uint8))
    raw = raw.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = model.scores_from_raw(raw)
        if targets is None:
            targets = scores.argmax(1)
        targets = targets.to(scores.device).long()
        picked = scores.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, raw)
    fmap, gmap = model._as_map(raw.detach()), model._as_map(grad)
    weights = gmap.mean(dim=(2, 3), keepdim=True)  # Grad-CAM: channel weight = spatially averaged gradient
    cam = F.relu((weights * fmap).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images_uint8.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam, scores.detach(), targets


def best_window(heatmaps: torch.Tensor, window: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``window`` (w, h) box with the most heatmap mass in each map: ``(boxes (B, 4) x,y,w,h, mass (B,))``.

    A box filter (``avg_pool2d`` with stride 1) sums every window at once; ties go to the first
    (top-left-most) window.
    """
    ww, wh = (window, window) if isinstance(window, int) else window
    B, H, W = heatmaps.shape
    if not (1 <= ww <= W and 1 <= wh <= H):
        raise ValueError(f"window {ww}x{wh} does not fit images of {W}x{H}")
    pooled = F.avg_pool2d(heatmaps[:, None].float(), kernel_size=(wh, ww), stride=1)[:, 0]  # (B, H-wh+1, W-ww+1)
    flat = pooled.flatten(1)
    mass, arg = flat.max(1)
    nx = pooled.shape[-1]
    ys, xs = arg // nx, arg % nx
    boxes = torch.stack([xs, ys, torch.full_like(xs, ww), torch.full_like(xs, wh)], 1)
    return boxes.long(), mass * (ww * wh)


def window_size(image_size: int, fraction: float) -> int:
    """A window side as a fraction of the image side (at least 1 px)."""
    return max(1, min(image_size, int(round(fraction * image_size))))


# ----------------------------------------------------------------------------------------- batching


def load_uint8(dataset, positions: Sequence[int] | np.ndarray, image_size: int | None = None) -> torch.Tensor:
    """``uint8`` (B, 3, H, W) batch of the images at ``positions`` (dataset order, not keys)."""
    resize = ResizeUint8(image_size) if image_size is not None else None
    arrs = []
    for p in np.asarray(positions, dtype=np.int64).tolist():
        arr = dataset.load_array(p)
        if resize is None or arr.shape[:2] == (image_size, image_size):  # already the size: skip PIL
            arrs.append(torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1))  # copy: cached arrays are read-only
        else:
            arrs.append(resize(dataset.load_image(p)))
    return torch.stack(arrs) if arrs else torch.zeros(0, 3, image_size or 1, image_size or 1, dtype=torch.uint8)


def iter_batches(n_or_positions, batch_size: int):
    pos = np.arange(n_or_positions) if np.isscalar(n_or_positions) else np.asarray(n_or_positions, dtype=np.int64)
    for s in range(0, len(pos), batch_size):
        yield pos[s:s + batch_size]


@dataclass
class CamResult:
    """Per-image Grad-CAM output for ``positions`` of a dataset.

    ``boxes`` (N, 4) x, y, w, h of the most activating window; ``mass`` (N,) heatmap mass in it;
    ``concentration`` (N,) that mass over the whole map's mass (1 = all attention in the window);
    ``targets`` (N,) the cluster explained; ``score`` (N,) the cosine similarity to it;
    ``heatmaps`` (N, H, W) only when asked for (they are large).
    """

    positions: np.ndarray
    boxes: np.ndarray
    mass: np.ndarray
    concentration: np.ndarray
    targets: np.ndarray
    score: np.ndarray
    heatmaps: np.ndarray | None = None


def cluster_cam(
    backbone: torch.nn.Module,
    dataset,
    centroids: np.ndarray,
    *,
    window: int,
    positions: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    batch_size: int = 256,
    image_size: int | None = None,
    keep_heatmaps: bool = False,
    device: str | torch.device = "cpu",
    accelerator=None,
) -> CamResult:
    """Grad-CAM of the cluster model and the best ``window`` x ``window`` box for every image at ``positions``.

    ``targets`` (aligned with ``positions``) picks the cluster to explain; default is the cluster the
    cluster model assigns (equal to the k-means assignment when the embeddings came from the same backbone).
    With ``accelerator`` every process must call this; the batches are split across the processes
    (:func:`sslguard.utils.dist.map_chunks`) and each gets the whole result on the accelerator's device.
    """
    if accelerator is not None:
        device = accelerator.device
    was_training = backbone.training
    backbone.eval()
    model = ClusterModel(backbone, centroids).to(device)
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions, dtype=np.int64)

    def one(j: int):
        pos = positions[j * batch_size:(j + 1) * batch_size]
        imgs = load_uint8(dataset, pos, image_size).to(device)
        t = None if targets is None else torch.as_tensor(targets[j * batch_size:j * batch_size + len(pos)])
        cam, scores, t = grad_cam(model, imgs, t)
        boxes, mass = best_window(cam, window)
        total = cam.flatten(1).sum(1).clamp_min(1e-12)
        return (boxes.cpu().numpy(), mass.cpu().numpy(), (mass / total).cpu().numpy(), t.cpu().numpy(),
                scores.gather(1, t[:, None])[:, 0].cpu().numpy(),
                cam.cpu().numpy().astype(np.float32) if keep_heatmaps else None)

    try:
        parts = map_chunks(one, list(range(-(-len(positions) // batch_size))), accelerator)
    finally:
        backbone.train(was_training)
    out_boxes, out_mass, out_conc, out_t, out_s, out_h = ([p[i] for p in parts] for i in range(6))
    cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt)  # noqa: E731
    return CamResult(positions, cat(out_boxes, (0, 4), np.int64), cat(out_mass, (0,), np.float32),
                     cat(out_conc, (0,), np.float32), cat(out_t, (0,), np.int64), cat(out_s, (0,), np.float32),
                     cat(out_h, (0, 1, 1), np.float32) if keep_heatmaps else None)


# ------------------------------------------------------------------------------------------ masking


def blur_fill(images_uint8: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """A heavily blurred copy of each image (down- then up-sampled), used to erase a window without
    pasting a sharp-edged square: an encoder that learned "any square patch" (as the CPU benchmark
    encoder did) would read a flat grey square as a trigger itself."""
    x = images_uint8.float()
    H, W = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, H // factor), max(1, W // factor)))
    return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)


def _box_sums(t: torch.Tensor, r: int) -> torch.Tensor:
    """Sum of ``t`` (B, C, H, W) over the (2r+1)^2 square around every pixel (zero outside the image),
    from an integral image: O(H W) whatever ``r`` (a box filter of that width costs (2r+1)^2 per pixel)."""
    H, W = t.shape[-2:]
    k = 2 * r + 1
    integral = F.pad(t, (r + 1, r, r + 1, r)).cumsum(2).cumsum(3)
    return (integral[..., k:k + H, k:k + W] - integral[..., :H, k:k + W]
            - integral[..., k:k + H, :W] + integral[..., :H, :W])


def context_fill(images_uint8: torch.Tensor, inside: torch.Tensor, window: int) -> torch.Tensor:
    """Each masked region filled from its surroundings only: the mean of the pixels *outside* the region
    (``inside``: (B, 1, H, W) bool) within a (2 x window + 1)-wide square, wide enough that every masked
    pixel sees some. A smooth inpainting by normalised convolution (Knutsson & Westin 1993); written here
    because torchvision has no inpainting and OpenCV is not a dependency."""
    outside = (~inside).to(torch.int32)
    # integer sums are exact (and fast); int32 holds 255 x the pixels of a 2,900 px square
    num = _box_sums(images_uint8.to(torch.int32) * outside, int(window))
    den = _box_sums(outside, int(window)).clamp_min(1)
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor").clamp(0, 255).to(torch.uint8)  # round half up


FILLS = ("context", "blur", "mean", "grey")


def mask_windows(images_uint8: torch.Tensor, boxes: torch.Tensor | np.ndarray, fill: str = "context") -> torch.Tensor:
    """Copies of the images with each image's box (x, y, w, h) erased by ``fill``:

    - ``"context"`` (default): inpainted from the pixels around the box (:func:`context_fill`). What was in
      the box leaves no trace, so a trigger is really gone, and no sharp square is pasted in its place;
    - ``"blur"``: a heavily blurred copy of the image itself (:func:`blur_fill`). The blur averages over
      blocks of an eighth of the image, so a patch's own colour survives in the box: on the 16 px
      quickstart digits the blurred 6 px trigger still read as a patch to the encoder;
    - ``"mean"`` (the image's mean colour) or ``"grey"``: flat squares, which an encoder that learned
      "any patch" reads as a trigger itself.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.long)
    out = images_uint8.clone()
    B, _, H, W = out.shape
    ys = torch.arange(H)[None, :, None]
    xs = torch.arange(W)[None, None, :]
    x0, y0, w, h = (boxes[:, i, None, None] for i in range(4))
    inside = ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h))[:, None].to(out.device)  # (B, 1, H, W)
    if fill == "context":
        src = context_fill(images_uint8, inside, int(boxes[:, 2:].max()) if len(boxes) else 1)
    elif fill == "blur":
        src = blur_fill(images_uint8)
    elif fill == "mean":
        src = images_uint8.float().mean(dim=(2, 3), keepdim=True).round().to(torch.uint8).expand_as(images_uint8)
    else:
        src = torch.full_like(images_uint8, 128)
    return torch.where(inside, src, out)


def paste_windows(targets_uint8: torch.Tensor, sources_uint8: torch.Tensor, boxes: np.ndarray,
                  at: np.ndarray) -> torch.Tensor:
    """Paste ``sources[i][box_i]`` onto ``targets[j]`` at ``at[j]`` (x, y) for every pair (i, j):
    returns (len(sources) * len(targets), 3, H, W), source-major. PatchSearch's test of a window."""
    S, T = len(sources_uint8), len(targets_uint8)
    out = targets_uint8.repeat(S, 1, 1, 1)
    for i in range(S):
        x, y, w, h = (int(v) for v in boxes[i])
        patch = sources_uint8[i, :, y:y + h, x:x + w]
        for j in range(T):
            ax, ay = int(at[j][0]), int(at[j][1])
            out[i * T + j, :, ay:ay + h, ax:ax + w] = patch
    return out


def sliding_boxes(image_size: tuple[int, int], window: int, stride: int) -> np.ndarray:
    """Every window x window box on a grid of ``stride`` covering the image (last row/column flush)."""
    H, W = image_size
    xs = sorted(set(list(range(0, W - window + 1, stride)) + [W - window]))
    ys = sorted(set(list(range(0, H - window + 1, stride)) + [H - window]))
    return np.asarray([(x, y, window, window) for y in ys for x in xs], dtype=np.int64)


def window_consistency(crops: Sequence[torch.Tensor], max_shift: int) -> float:
    """How much a set of equal-sized crops (each (C, h, w)) look like copies of one pattern: for each crop, its
    best Pearson correlation (all channels) with any other crop over relative shifts of up to ``max_shift``
    pixels each way (a trigger found on a grid of stride s sits at an offset below s in each window); the
    median over crops. Near 1 when most crops have a copy among the others, so a few crops that missed the
    pattern do not count; a flat crop correlates with nothing (-1). ``nan`` for fewer than two crops.

    Written here because what is needed is a best-shift correlation over the overlap of a few small crops,
    which no library call gives in one step (``torch.nn.functional.conv2d`` gives raw products)."""
    if len(crops) < 2:
        return float("nan")
    x = torch.stack([c.float().cpu() for c in crops])
    n, (h, w) = len(x), x.shape[-2:]
    i, j = torch.triu_indices(n, n, 1)
    xi, xj, best = x[i], x[j], torch.full((len(i),), -1.0)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if abs(dy) >= h or abs(dx) >= w:
                continue
            a = xi[..., max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)].flatten(1)
            b = xj[..., max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)].flatten(1)
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            den = ((a * a).sum(1) * (b * b).sum(1)).sqrt()
            r = torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-12), torch.full_like(den, -1.0))
            best = torch.maximum(best, r)
    pair = torch.full((n, n), -1.0)
    pair[i, j] = pair[j, i] = best
    return float(np.median(pair.max(1).values.numpy()))


# ------------------------------------------------------------------- cluster activation under masking


@torch.no_grad()
def masked_drop(model: ClusterModel, images_uint8: torch.Tensor, boxes: np.ndarray, targets: torch.Tensor,
                base: torch.Tensor, fill: str = "context") -> tuple[torch.Tensor, torch.Tensor]:
    """Drop of cluster ``targets``' activation when each image's box is masked: ``base - masked``
    (``base`` (B,) is the unmasked activation), and the masked images' new assignment (B,)."""
    scores = model(mask_windows(images_uint8, boxes, fill))
    return base - scores.gather(1, targets[:, None].long())[:, 0], scores.argmax(1)


@torch.no_grad()
def search_windows(model: ClusterModel, images_uint8: torch.Tensor, targets: torch.Tensor, grid: np.ndarray,
                   fill: str = "context", batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask every box of ``grid`` (G, 4) in turn and keep, per image, the box whose masking lowers the
    activation of cluster ``targets`` most. Returns ``(best drop (B,), best box (B, 4), unmasked activation (B,))``.

    Exhaustive, so it finds the trigger where Grad-CAM's window missed it (the 4x4 CAM of a small
    network is coarse); it costs G forward passes per image, so detectors run it on candidates only.
    """
    B, G = len(images_uint8), len(grid)
    targets = targets.long()
    base = model(images_uint8).gather(1, targets[:, None])[:, 0]
    img_idx = np.repeat(np.arange(B), G)
    box_idx = np.tile(np.arange(G), B)
    drops = torch.empty(B * G, device=base.device)
    for s in range(0, B * G, batch_size):
        ii, bb = img_idx[s:s + batch_size], box_idx[s:s + batch_size]
        masked = mask_windows(images_uint8[ii], grid[bb], fill)
        sc = model(masked).gather(1, targets[ii][:, None])[:, 0]
        drops[s:s + len(ii)] = base[ii] - sc
    drops = drops.view(B, G)
    best, arg = drops.max(1)
    return best, torch.as_tensor(grid, device=arg.device)[arg], base

__all__ = [
    "ClusterModel", "CamResult", "grad_cam", "best_window", "cluster_cam", "window_size", "load_uint8",
    "iter_batches", "blur_fill", "context_fill", "mask_windows", "paste_windows", "sliding_boxes", "masked_drop",
    "search_windows", "window_consistency",
]
