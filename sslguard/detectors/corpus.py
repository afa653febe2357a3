"""The corpus under a cluster model: what the cluster-based SSL detectors (PoisonCAM, PatchSearch) share.

:func:`prepare_embeddings_and_clusters` checks (or computes) the encoder's normalised embeddings and
their k-means clusters; :class:`Corpus` gives batched access to the images together with the cluster
model (:class:`sslguard.cam.ClusterModel`: cosine similarity of an image's embedding to each centroid)
and the masking and pasting probes both detectors run on it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import fisher_exact

from sslguard.cam import ClusterModel, best_window, grad_cam, load_uint8, masked_drop, search_windows
from sslguard.cluster import ClusterResult, kmeans
from sslguard.erasers import add_residuals, erased_uint8
from sslguard.poison_classifier import paste_many, paste_places
from sslguard.utils.chunks import iter_rows
from sslguard.utils.dist import map_chunks

__all__ = ["Corpus", "cluster_groups", "colour_explains", "group_extra", "mutual_nearest", "nearest_confirmed",
           "prepare_embeddings_and_clusters"]


def _centroid_similarity(centroids: np.ndarray) -> np.ndarray:
    """Cosine similarity between centroids, ``-inf`` on the diagonal (a cluster is not its own neighbour)."""
    c = np.asarray(centroids, dtype=np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    sim = c @ c.T
    np.fill_diagonal(sim, -np.inf)
    return sim


def _mutual(sim: np.ndarray) -> np.ndarray:
    nearest = sim.argmax(1)
    return np.where(nearest[nearest] == np.arange(len(sim)), nearest, -1)


def mutual_nearest(centroids: np.ndarray) -> np.ndarray:
    """Each cluster's *twin*: the cluster whose centroid is its nearest (cosine) when that one's nearest is
    it in turn; -1 when the nearest is not mutual. Pairs only: a group split three ways is not joined."""
    return _mutual(_centroid_similarity(centroids))


def group_extra(k: int, group_k: int | None) -> int:
    """How many nearest clusters join each cluster's group: ``ceil(k / group_k) - 1`` (0 at ``k <= group_k`` or
    when ``group_k`` is ``None``). k-means with k far above a corpus' natural groups cuts a group holding a
    share p of the corpus, a tight trigger group too, into about ``p * k`` pieces, and a pasted trigger lands
    in any of them; ``ceil(k / group_k)`` clusters hold about ``1 / group_k`` of the corpus, so a group of
    up to that share fits."""
    if group_k is None or k <= group_k:
        return 0
    return int(-(-k // group_k)) - 1


def cluster_groups(centroids: np.ndarray, *, twins: bool = True, extra: int = 0) -> np.ndarray:
    """``(k, k)`` bool: row ``c`` marks the clusters a paste into ``c`` may land in and still count as an
    arrival: ``c``, its twin (:func:`mutual_nearest`, when ``twins``), and its ``extra`` nearest centroids
    (cosine; ties broken by the lower index). Not symmetric in general."""
    sim = _centroid_similarity(centroids)
    k = len(sim)
    g = np.eye(k, dtype=bool)
    if twins and k > 1:
        t = _mutual(sim)
        has = t >= 0
        g[np.flatnonzero(has), t[has]] = True
    extra = min(int(extra), k - 1)
    if extra > 0:
        near = np.argsort(-sim, axis=1, kind="stable")[:, :extra]
        g[np.arange(k)[:, None], near] = True
    return g


def prepare_embeddings_and_clusters(backbone, dataset, embeddings, clusters, *, k, seed, batch_size, image_size,
                                    ) -> tuple[np.ndarray, ClusterResult]:
    """Embeddings (computed when not given) and k-means clusters (fitted when not given), checked for size."""
    if embeddings is None:
        from sslguard.embed import embed_dataset

        _, embeddings = embed_dataset(backbone, dataset, batch_size=batch_size, image_size=image_size,
                                      normalize=True, progress=False)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) != len(dataset):
        raise ValueError(f"{len(embeddings)} embeddings for a dataset of {len(dataset)} images")
    if clusters is None:
        clusters = kmeans(embeddings, k, spherical=True, seed=seed)
    if clusters.n != len(dataset):
        raise ValueError(f"clusters were fitted on {clusters.n} rows, the dataset has {len(dataset)} images")
    return embeddings, clusters


class Corpus:
    """Batched image access + cluster model, shared by the steps of the cluster-based detectors.

    With ``accelerator`` (several processes) the per-image steps are split by batch across the processes
    and gathered (:func:`sslguard.utils.dist.map_chunks`): every process must run the same detector code,
    and each gets the same results as one process would. ``device`` is then the accelerator's."""

    def __init__(self, backbone, dataset, centroids, batch_size, image_size, device, twins: bool = True,
                 accelerator=None, group_k: int | None = None):
        if accelerator is not None:
            device = accelerator.device
        self.dataset, self.batch_size, self.image_size, self.device = dataset, batch_size, image_size, device
        self.accelerator = accelerator
        self.model = ClusterModel(backbone, centroids).to(device).eval()
        # k-means above a corpus' natural groups may split one tight trigger group in two mutually nearest
        # halves, and at k far above them into many pieces; a pasted trigger then lands in any
        # of them, so arrivals count for the cluster's group (``groups``)
        self.twin = mutual_nearest(centroids) if twins else np.full(len(centroids), -1)
        self.groups = cluster_groups(centroids, twins=twins, extra=group_extra(len(centroids), group_k))

    def group(self, c: int) -> np.ndarray:
        """The clusters a paste into ``c`` may reach (:func:`cluster_groups`): ``c``, its twin, its neighbours."""
        return np.flatnonzero(self.groups[c])

    def images(self, pos: np.ndarray) -> torch.Tensor:
        return load_uint8(self.dataset, pos, self.image_size).to(self.device)

    def map(self, fn, chunks: list) -> list:
        """``fn`` on every chunk, split across the processes (:func:`~sslguard.utils.dist.map_chunks`)."""
        return map_chunks(fn, chunks, self.accelerator)

    def cam_and_mask(self, positions: np.ndarray, targets: np.ndarray, window: int, fill: str):
        """Grad-CAM window of cluster ``targets`` and the activation drop when it is masked, for ``positions``."""
        def one(s: int):
            pos = positions[s:s + self.batch_size]
            t = torch.as_tensor(targets[s:s + len(pos)], device=self.device)
            imgs = self.images(pos)
            cam, scores, _ = grad_cam(self.model, imgs, t)
            b, _ = best_window(cam, window)
            act = scores.gather(1, t[:, None])[:, 0]
            d, _ = masked_drop(self.model, imgs, b.cpu().numpy(), t, act, fill)
            return d.cpu().numpy(), b.cpu().numpy(), act.detach().cpu().numpy()

        parts = self.map(one, list(range(0, len(positions), self.batch_size)))
        drop = np.zeros(len(positions), np.float32)
        base = np.zeros(len(positions), np.float32)
        boxes = np.zeros((len(positions), 4), np.int64)
        for s, (d, b, a) in zip(range(0, len(positions), self.batch_size), parts):
            drop[s:s + len(d)], boxes[s:s + len(d)], base[s:s + len(d)] = d, b, a
        return drop, boxes, base

    @torch.no_grad()
    def _pull_rate(self, n_items: int, imgs: torch.Tensor, cluster: int, apply) -> float:
        """Share of (item, test image) pairs that ``apply(j, s, batch)`` (item ``j`` put on the test images from
        ``s``) brings into ``cluster``'s :meth:`group`, split across the processes by batch."""
        into = torch.as_tensor(self.group(cluster), device=self.device)

        def one(job: tuple[int, int]) -> int:
            j, s = job
            out = apply(j, s, imgs[s:s + self.batch_size])
            return int(torch.isin(self.model(out).argmax(1), into).sum())

        jobs = [(j, s) for j in range(n_items) for s in range(0, len(imgs), self.batch_size)]
        return sum(self.map(one, jobs)) / max(n_items * len(imgs), 1)

    def paste_rate(self, patches: list[torch.Tensor], test_pos: np.ndarray, cluster: int,
                   rng: np.random.Generator) -> float:
        """Share of (patch, test image) pairs whose pasted copy the cluster model assigns to ``cluster`` (or
        a cluster of its :meth:`group`); the test images should lie outside the group."""
        imgs = self.images(test_pos)
        # every place is drawn first, in patch order, so the draws do not depend on how the work is split
        places = [paste_places(rng, [p] * len(imgs), imgs.shape[-1]) for p in patches]
        def paste(j: int, s: int, part: torch.Tensor) -> torch.Tensor:
            return paste_many(part, [patches[j]] * len(part), places[j][s:s + len(part)])

        return self._pull_rate(len(patches), imgs, cluster, paste)

    @torch.no_grad()
    def eraser_drops(self, positions: np.ndarray, targets: np.ndarray, erasers) -> dict[str, np.ndarray]:
        """Per eraser, the drop of cluster ``targets``' activation when the whole image is erased by it
        (:func:`sslguard.erasers.erase`): the global analogue of :meth:`cam_and_mask`'s window. Each image is
        read, and its unerased activation computed, once for all the erasers."""
        erasers = list(erasers)

        def one(s: int) -> np.ndarray:
            pos = positions[s:s + self.batch_size]
            t = torch.as_tensor(targets[s:s + len(pos)], device=self.device)[:, None]
            imgs = self.images(pos)
            before = self.model(imgs).gather(1, t)[:, 0]
            return torch.stack([before - self.model(erased_uint8(imgs, e)).gather(1, t)[:, 0]
                                for e in erasers]).cpu().numpy()

        parts = self.map(one, list(range(0, len(positions), self.batch_size)))
        drops = np.concatenate(parts, axis=1).astype(np.float64) if parts else np.zeros((len(erasers), 0))
        return dict(zip(erasers, drops))

    def residual_rate(self, res: list[torch.Tensor], test_pos: np.ndarray, cluster: int) -> float:
        """Share of (residual, test image) pairs whose sum the cluster model assigns to ``cluster``'s
        :meth:`group`: :meth:`paste_rate` for what a whole-image eraser took away (no place to draw)."""
        imgs = self.images(test_pos)
        return self._pull_rate(len(res), imgs, cluster,
                               lambda j, s, part: add_residuals(part, res[j].to(part.device)))

    @staticmethod
    def flat_copies(patches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each patch filled with its own mean colour: the colour without the pattern. A window that pulls
        images into a cluster only as well as its flat copy does carries a colour the encoder groups by
        (blue sky pulling images among the ships and aeroplanes), not a trigger pattern."""
        return [p.float().mean(dim=(1, 2), keepdim=True).expand_as(p).round().to(p.dtype) for p in patches]

    def search(self, positions: np.ndarray, targets: np.ndarray, grid: np.ndarray, fill: str):
        """Exhaustive sliding-window masking: best drop and box per image."""
        per = max(1, self.batch_size // len(grid))  # images per chunk so one chunk is ~batch_size masked copies

        def one(s: int):
            pos = positions[s:s + per]
            t = torch.as_tensor(targets[s:s + len(pos)], device=self.device)
            d, b, _ = search_windows(self.model, self.images(pos), t, grid, fill, self.batch_size)
            return d.cpu().numpy(), b.cpu().numpy()

        starts = list(range(0, len(positions), per))
        drop = np.zeros(len(positions), np.float32)
        boxes = np.zeros((len(positions), 4), np.int64)
        for s, (d, b) in zip(starts, self.map(one, starts)):
            drop[s:s + len(d)], boxes[s:s + len(d)] = d, b
        return drop, boxes


def colour_explains(rate: float, flat: float | None, bar: float, n: int) -> bool:
    """Whether flat mean-colour copies of a cluster's windows (:meth:`Corpus.flat_copies`) explain the windows'
    pull ``rate``: the copies pull ``bar`` themselves, unless the windows pull ``bar`` of the images the copies
    leave out (Abbott's correction for a control's own response, ``(rate - flat) / (1 - flat)``; Abbott 1925,
    "A method of computing the effectiveness of an insecticide") and significantly more than the copies over
    ``n`` pastes each (one-sided Fisher p <= 0.01, as the shared-pattern check). Why: an encoder that learned a
    patch trigger also answers to patches like it (on the quickstart's digits, target class 3, flat copies of
    the HTBA windows pulled 0.62 and the windows 0.99), while blue sky on clean CIFAR-10 pulled 0.89 against its
    copies' 0.83 (``benchmarks/quickstart_variants.md``, ``clean_corpora.md``)."""
    if flat is None or flat < bar:
        return False
    hits = [round(rate * n), round(flat * n)]
    p = float(fisher_exact([[h, n - h] for h in hits], alternative="greater").pvalue)
    return not ((rate - flat) / max(1.0 - flat, 1e-12) >= bar and p <= 0.01)


def nearest_confirmed(embeddings: np.ndarray, centroids: np.ndarray, confirmed: list,
                      block: int = 32_768) -> np.ndarray:
    """For every row of ``embeddings``, the confirmed cluster whose centroid is most similar (cosine), read
    in blocks (:func:`~sslguard.utils.chunks.iter_rows`) so a memory-mapped matrix is never loaded whole.
    A member of a confirmed cluster gets its own."""
    cent = np.asarray(centroids, np.float64)[confirmed]
    cent = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    conf = np.asarray(confirmed, np.int64)
    out = np.empty(len(embeddings), np.int64)
    for s, rows in iter_rows(embeddings, block, dtype=np.float64):
        out[s:s + len(rows)] = conf[np.argmax(rows @ cent.T, axis=1)]
    return out
