"""Datasets whose every item is ``(image, label, index)``.

``image`` is an 8-bit RGB ``PIL.Image``; ``label`` is an ``int`` (``-1`` when the corpus has no labels);
``index`` is the item's *key*: its canonical index in the source corpus (CIFAR-10's original order,
sorted file order for a folder). Keys survive subsetting, so scores, manifests and embeddings computed
on a subset still name the same images. Transforms stay outside: wrap with
:class:`sslguard.data.transforms.TransformDataset` or collate with
:func:`sslguard.data.transforms.collate_uint8`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import zipfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from sslguard.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageLoadError,
    SkippedFile,
    load_rgb,
)
from sslguard.utils.io import atomic_path

log = logging.getLogger(__name__)

UNLABELED = -1

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class IndexedDataset(Dataset, ABC):
    """Base class: ``labels`` and ``keys`` are arrays aligned with positions ``0..len-1``."""

    classes: list[str]
    labels: np.ndarray
    keys: np.ndarray
    skipped: list[SkippedFile]

    def __len__(self) -> int:
        return len(self.keys)

    @abstractmethod
    def load_image(self, pos: int) -> Image.Image:
        """The image at position ``pos`` as 8-bit RGB."""

    def path(self, pos: int) -> str | None:
        """The source file of item ``pos``, where there is one."""
        return None

    def load_array(self, pos: int) -> np.ndarray:
        """The image at ``pos`` as a ``uint8`` ``(H, W, 3)`` array."""
        return np.asarray(self.load_image(pos), dtype=np.uint8)

    def __getitem__(self, pos: int):
        pos = int(pos)
        return self.load_image(pos), int(self.labels[pos]), int(self.keys[pos])

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels != UNLABELED).all())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def positions_of(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions of the given keys; raises ``KeyError`` naming the first unknown key."""
        lookup = {int(k): i for i, k in enumerate(self.keys)}
        out = np.empty(len(keys), dtype=np.int64)
        for j, k in enumerate(keys):
            try:
                out[j] = lookup[int(k)]
            except KeyError:
                raise KeyError(f"index {int(k)} is not in this dataset") from None
        return out

    def subset(self, positions: Sequence[int] | np.ndarray) -> "IndexedSubset":
        return IndexedSubset(self, np.asarray(positions, dtype=np.int64))

    def all_paths(self) -> list[str | None]:
        return [self.path(i) for i in range(len(self))]


class ArrayDataset(IndexedDataset):
    """Images held in memory as one ``uint8`` ``(N, H, W, 3)`` array (CIFAR-10, digits, tests)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        classes: Sequence[str],
        keys: np.ndarray | None = None,
        paths: Sequence[str] | None = None,
    ):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.keys = np.arange(len(images), dtype=np.int64) if keys is None else np.asarray(keys, dtype=np.int64)
        if not (len(self.labels) == len(self.keys) == len(images)):
            raise ValueError("images, labels and keys must have the same length")
        if len(np.unique(self.keys)) != len(self.keys):
            raise ValueError("keys must be unique: the index is an image's identity")
        self.classes = list(classes)
        self._paths = list(paths) if paths is not None else None
        self.skipped = []

    def load_image(self, pos: int) -> Image.Image:
        return Image.fromarray(self.images[pos], mode="RGB")

    def load_array(self, pos: int) -> np.ndarray:
        return self.images[pos]

    def path(self, pos: int) -> str | None:
        return self._paths[pos] if self._paths is not None else None


class IndexedSubset(IndexedDataset):
    """A view of some positions of another dataset; keys (identities) are kept."""

    def __init__(self, base: IndexedDataset, positions: np.ndarray):
        if len(positions) and (positions.min() < 0 or positions.max() >= len(base)):
            raise IndexError(f"subset positions out of range for a dataset of {len(base)} items")
        self.base = base
        self.positions = positions
        self.labels = base.labels[positions]
        self.keys = base.keys[positions]
        self.classes = base.classes
        self.skipped = list(getattr(base, "skipped", []))

    def load_image(self, pos: int) -> Image.Image:
        return self.base.load_image(int(self.positions[pos]))

    def load_array(self, pos: int) -> np.ndarray:
        return self.base.load_array(int(self.positions[pos]))

    def path(self, pos: int) -> str | None:
        return self.base.path(int(self.positions[pos]))


# --------------------------------------------------------------------------------------------- digits


def load_digits_dataset(split: str = "train", size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images) as RGB, upsampled to ``size`` (the embedded default).

    The split is a seeded stratified split of the 1,797 images; keys are indices into sklearn's order,
    so the train and test keys never overlap. ``split="all"`` gives every image.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(g, mode="L").resize((size, size), Image.BILINEAR)) for g in grey])
    images = np.repeat(up[..., None], 3, axis=-1)
    labels = bunch.target.astype(np.int64)
    keys = np.arange(len(images))
    if split != "all":
        train_pos, test_pos = stratified_split(labels, test_fraction, seed)
        pos = {"train": train_pos, "test": test_pos}.get(split)
        if pos is None:
            raise ValueError(f"digits split must be 'train', 'test' or 'all', not {split!r}")
        images, labels, keys = images[pos], labels[pos], keys[pos]
    return ArrayDataset(images, labels, [str(i) for i in range(10)], keys=keys)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split into sorted train and test positions."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        rng.shuffle(pos)
        n_test = int(round(len(pos) * test_fraction))
        test.append(pos[:n_test])
        train.append(pos[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# -------------------------------------------------------------------------------------------- cifar10


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSLGUARD_CACHE", Path.home() / ".cache" / "sslguard"))


def find_cifar10_root() -> Path | None:
    """The first CIFAR-10 copy found: ``$SSLGUARD_CIFAR10``, then ``../shared/data/cifar10`` upwards."""
    env = os.environ.get("SSLGUARD_CIFAR10")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for parent in [here, *here.parents]:
        cand = parent / "shared" / "data" / "cifar10"
        if (cand / "cifar10-jpeg-index.csv").exists():
            return cand
    return None


def _cifar10_from_jpeg_zip(root: Path, split: str, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    zpath, cpath = root / "cifar10-jpeg.zip", root / "cifar10-jpeg-index.csv"
    tag = hashlib.sha1(f"{zpath.resolve()}:{zpath.stat().st_size}:{zpath.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    cache = (cache_dir / f"cifar10-jpeg-{split}-{tag}.npz") if cache_dir is not None else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as z:
                return z["images"], z["labels"]
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable CIFAR-10 cache %s (%s)", cache, exc)
    n = 50000 if split == "train" else 10000
    images = np.zeros((n, 32, 32, 3), np.uint8)
    labels = np.full(n, -1, np.int64)
    with zipfile.ZipFile(zpath) as zf, open(cpath, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] != split:
                continue
            i = int(row["orig_index"])
            images[i] = np.asarray(Image.open(io.BytesIO(zf.read(row["path"]))).convert("RGB"))
            labels[i] = int(row["label"])
    if (labels < 0).any():
        raise ValueError(f"{cpath}: {int((labels < 0).sum())} {split} rows missing")
    if cache is not None:
        try:
            with atomic_path(cache, suffix=".npz") as tmp:
                np.savez(tmp, images=images, labels=labels)
        except OSError as exc:
            log.warning("could not write CIFAR-10 cache %s (%s)", cache, exc)
    return images, labels


def load_cifar10(
    root: str | os.PathLike | None = None, split: str = "train", cache_dir: str | os.PathLike | None = "default"
) -> ArrayDataset:
    """CIFAR-10 with keys in the canonical order (train 0..49999, test 0..9999).

    ``root`` may hold torchvision's ``cifar-10-batches-py`` (used as is) or the project's JPEG copy
    (``cifar10-jpeg.zip`` + ``cifar10-jpeg-index.csv``, decoded once and cached as ``.npz``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"cifar10 split must be 'train' or 'test', not {split!r}")
    root_path = Path(root) if root is not None else find_cifar10_root()
    if root_path is None or not root_path.exists():
        raise FileNotFoundError(
            f"CIFAR-10 not found (root={root!r}); pass data.root, set SSLGUARD_CIFAR10, or place it at ../shared/data/cifar10"
        )
    if (root_path / "cifar-10-batches-py").is_dir():
        from torchvision.datasets import CIFAR10

        tv = CIFAR10(str(root_path), train=(split == "train"), download=False)
        images, labels = np.asarray(tv.data, dtype=np.uint8), np.asarray(tv.targets, dtype=np.int64)
    elif (root_path / "cifar10-jpeg.zip").exists():
        cdir = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        images, labels = _cifar10_from_jpeg_zip(root_path, split, cdir)
    else:
        raise FileNotFoundError(f"{root_path}: neither cifar-10-batches-py/ nor cifar10-jpeg.zip is there")
    return ArrayDataset(images, labels, CIFAR10_CLASSES)


# ---------------------------------------------------------------------------------------- imagefolder


def _walk_images(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """All image files below ``root`` in sorted order; follows directory symlinks but never loops."""
    seen: set[str] = set()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            log.warning("symlink loop: %s points back to %s; not followed again", dirpath, real)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(extensions) and not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


class ImageFolderDataset(IndexedDataset):
    """Images from a folder: ``root/<class>/**/<img>`` (labeled) or ``root/<img>`` (unlabeled, label -1).

    Keys are positions in sorted (class, path) order over the files that loaded. Each file is checked
    once at construction (``check="decode"`` decodes it fully, which is the only way to catch truncated
    data; ``"header"`` only opens it, for very large corpora). ``on_error="skip"`` leaves unreadable
    files out and lists them in ``skipped`` (path and reason) and the log; ``"raise"`` stops with
    :class:`ImageLoadError` naming the first bad file. Empty class folders keep their class id, so
    labels match ``torchvision.datasets.ImageFolder``. Nothing under ``root`` is ever written.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        on_error: str = "skip",
        check: str = "decode",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        num_workers: int = 4,
        progress: bool = True,
    ):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        if check not in ("decode", "header"):
            raise ValueError(f"check must be 'decode' or 'header', not {check!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.max_pixels = max_pixels
        self.on_error = on_error
        exts = tuple(e.lower() for e in extensions)
        class_dirs = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        flat_files = sorted(p for p in self.root.iterdir() if p.is_file() and p.name.lower().endswith(exts))
        candidates: list[tuple[Path, int]] = []
        if class_dirs:
            self.classes = class_dirs
            for c, name in enumerate(class_dirs):
                files = _walk_images(self.root / name, exts)
                if not files:
                    log.warning("class folder %s holds no images", self.root / name)
                candidates += [(p, c) for p in files]
            if flat_files:
                log.warning("%d image files directly under %s are ignored (class-folder layout)", len(flat_files), self.root)
        else:
            self.classes = []
            candidates = [(p, UNLABELED) for p in flat_files]
        if not candidates:
            raise FileNotFoundError(f"no images with extensions {exts} under {self.root}")

        ok = self._check_all([p for p, _ in candidates], check, num_workers, progress)
        self.skipped = [SkippedFile(str(p), reason) for (p, _), reason in zip(candidates, ok) if reason is not None]
        kept = [(p, c) for (p, c), reason in zip(candidates, ok) if reason is None]
        for s in self.skipped:
            log.warning("skipped %s: %s", s.path, s.reason)
        if not kept:
            raise ImageLoadError(str(self.root), "no readable images (all skipped)")
        self._paths = [str(p) for p, _ in kept]
        self.labels = np.asarray([c for _, c in kept], dtype=np.int64)
        self.keys = np.arange(len(kept), dtype=np.int64)

    def _check_all(self, paths: list[Path], check: str, num_workers: int, progress: bool) -> list[str | None]:
        def one(p: Path) -> str | None:
            try:
                if "\n" in str(p) or "\r" in str(p):  # would split into two lines of a clean manifest
                    raise ImageLoadError(str(p), "file name contains a line break (cannot be listed in a manifest)")
                if check == "decode":
                    load_rgb(p, self.max_pixels)
                else:
                    if os.path.getsize(p) == 0:
                        raise ImageLoadError(str(p), "zero-byte file")
                    try:
                        with Image.open(p) as im:
                            if self.max_pixels and im.width * im.height > self.max_pixels:
                                raise ImageLoadError(str(p), f"image too large ({im.width}x{im.height} px)")
                    except Image.UnidentifiedImageError:
                        raise ImageLoadError(str(p), "not an image (unrecognised format)") from None
                    except Image.DecompressionBombError as exc:  # PIL refuses > 2x its own limit at open
                        raise ImageLoadError(str(p), f"image too large (decompression-bomb limit): {exc}") from None
                return None
            except ImageLoadError as exc:
                if self.on_error == "raise":
                    raise
                return exc.reason
            except OSError as exc:
                if self.on_error == "raise":
                    raise ImageLoadError(str(p), str(exc)) from None
                return str(exc)

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            it = pool.map(one, paths)
            return list(tqdm(it, total=len(paths), desc=f"checking {self.root.name}", disable=None if progress else True, leave=False))

    def load_image(self, pos: int) -> Image.Image:
        return load_rgb(self._paths[pos], self.max_pixels)

    def path(self, pos: int) -> str | None:
        return self._paths[pos]


# ------------------------------------------------------------------------------------------- helpers


def subset_per_class(dataset: IndexedDataset, n_per_class: int, seed: int = 0) -> IndexedSubset:
    """A seeded subset with at most ``n_per_class`` items of each label (unlabeled: ``n`` items in all)."""
    if n_per_class <= 0:
        raise ValueError(f"n_per_class must be positive, got {n_per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(dataset.labels):
        pos = np.flatnonzero(dataset.labels == c)
        picks.append(np.sort(rng.choice(pos, size=min(n_per_class, len(pos)), replace=False)))
    return dataset.subset(np.sort(np.concatenate(picks)))


DATASETS: dict[str, Callable[..., IndexedDataset]] = {}


def build_dataset(
    name: str,
    split: str = "train",
    root: str | None = None,
    subset_per_class_n: int | None = None,
    seed: int = 0,
    on_error: str = "skip",
    image_size: int = 32,
) -> IndexedDataset:
    """Build a dataset by name: ``digits``, ``cifar10`` or ``imagefolder`` (``root`` is the folder).

    For ``imagefolder``, ``split`` names a sub-folder when ``root/<split>`` exists (``train``/``val``);
    otherwise ``root`` itself is used.
    """
    if name == "digits":
        ds: IndexedDataset = load_digits_dataset(split, size=image_size, seed=seed)
    elif name == "cifar10":
        ds = load_cifar10(root, split)
    elif name == "imagefolder":
        if root is None:
            raise ValueError("data.root: an imagefolder dataset needs a root folder")
        folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
        ds = ImageFolderDataset(folder, on_error=on_error)
    else:
        raise ValueError(f"data.name: unknown dataset {name!r}; choose from digits, cifar10, imagefolder")
    if subset_per_class_n:
        ds = subset_per_class(ds, subset_per_class_n, seed)
    return ds
