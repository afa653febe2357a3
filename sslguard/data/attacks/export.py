"""Poison a dataset and write what a person and a program need to check it: the manifest (CSV + JSON)
and a preview grid of clean versus poisoned images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from sslguard.data.attacks.base import Attack
from sslguard.data.datasets import IndexedDataset
from sslguard.data.manifest import PoisonManifest
from sslguard.data.poisoned import PoisonedDataset, poison_dataset
from sslguard.utils.io import atomic_path

log = logging.getLogger(__name__)


def save_preview(poisoned: PoisonedDataset, path: str | os.PathLike, n: int = 8, seed: int = 0) -> Path | None:
    """A PNG grid: clean images (top row), their poisoned versions (middle) and the absolute difference
    stretched to the full grey range (bottom; global triggers such as CTRL or WaNet are invisible
    otherwise). Up to ``n`` poisoned images, chosen with ``seed``. Returns ``None`` when nothing is poisoned."""
    import matplotlib

    matplotlib.use("Agg")  # scripts run headless; never open a window
    import matplotlib.pyplot as plt

    pos = np.flatnonzero(poisoned.poisoned_mask)
    if len(pos) == 0:
        log.warning("no poisoned images: preview %s not written", path)
        return None
    pick = np.sort(np.random.default_rng(seed).choice(pos, size=min(n, len(pos)), replace=False))
    fig, axes = plt.subplots(3, len(pick), figsize=(1.6 * len(pick), 5.2), squeeze=False)
    for j, p in enumerate(pick.tolist()):
        clean, bad = poisoned.base.load_array(p), poisoned.load_array(p)
        diff = np.abs(bad.astype(np.int16) - clean.astype(np.int16)).max(axis=-1)
        scale = 255.0 / diff.max() if diff.max() else 0.0
        rec = poisoned.manifest.records[int(poisoned.keys[p])]
        axes[0, j].imshow(clean)
        axes[0, j].set_title(f"#{rec.index} y={rec.original_label}", fontsize=7)
        axes[1, j].imshow(bad)
        axes[1, j].set_title(f"poisoned y={rec.label}", fontsize=7)
        axes[2, j].imshow((diff * scale).astype(np.uint8), cmap="gray", vmin=0, vmax=255)
        axes[2, j].set_title(f"|diff| max {int(diff.max())}", fontsize=7)
        for ax in axes[:, j]:
            ax.set_axis_off()
    man = poisoned.manifest
    fig.suptitle(f"{man.attack}: {man.n_poisoned} poisoned, target {man.target}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def poison_and_save(dataset: IndexedDataset, attack: Attack, output_dir: str | os.PathLike,
                    preview: str | os.PathLike | None = None, preview_n: int = 8
                    ) -> tuple[PoisonedDataset, PoisonManifest, dict[str, Path]]:
    """:func:`~sslguard.data.poisoned.poison_dataset`, then ``manifest.csv`` / ``manifest.json`` in
    ``output_dir`` and the optional preview PNG. Returns the poisoned view, the manifest and the paths."""
    poisoned, manifest = poison_dataset(dataset, attack)
    csv_path, json_path = manifest.save(output_dir)
    paths = {"manifest_csv": csv_path, "manifest_json": json_path}
    if preview is not None:
        written = save_preview(poisoned, preview, n=preview_n, seed=attack.seed)
        if written is not None:
            paths["preview"] = written
    log.info("%s: %d of %d images poisoned (target %d); manifest in %s", attack.name, manifest.n_poisoned,
             len(dataset), attack.target, output_dir)
    return poisoned, manifest, paths
