"""Self-supervised models around a :class:`~sslguard.models.backbones.StagedBackbone`, and encoder files.

- :class:`SimCLR` (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations"): backbone -> 2-layer MLP projection head -> NT-Xent loss. The loss gathers the
  projections of every process (``gather_distributed=True``), so negatives span the global batch.
- :class:`BYOL` (Grill et al. 2020, "Bootstrap Your Own Latent"): an online backbone + projector +
  predictor regresses a momentum (EMA) target network's projection; symmetrised negative cosine
  similarity; the EMA momentum follows a cosine schedule from ``momentum_base`` to 1.

Both take two augmented views and return the loss from ``forward(x0, x1)``, so a DDP wrapper (via
``accelerate``) sees the whole step. Heads, losses and the momentum utilities are lightly's.

Limits: BatchNorm statistics are per process (no SyncBatchNorm unless the caller converts the model);
SimCLR with small batches (< 256) learns more slowly than in the paper, which used 4096.

Encoder files (:func:`save_backbone` / :func:`load_backbone`) hold only the backbone's tensors, in
safetensors format (never pickle), with metadata naming the backbone and its keyword arguments.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule

from sslguard.models.backbones import StagedBackbone, create_backbone
from sslguard.utils.io import atomic_path

ENCODER_FORMAT = "sslguard-encoder-v1"


def make_backbone(name: str, **kwargs: Any) -> StagedBackbone:
    """:func:`create_backbone` that remembers its keyword arguments, so the encoder file can rebuild it."""
    backbone = create_backbone(name, **kwargs)
    backbone.backbone_kwargs = dict(kwargs)
    return backbone


class SimCLR(nn.Module):
    """SimCLR (Chen et al. 2020): ``loss = NTXent(g(f(x0)), g(f(x1)))``.

    Args:
        backbone: the encoder ``f`` (its pooled features feed the head).
        proj_dim: output size of the projection head ``g`` (128 in the paper).
        hidden_dim: hidden width of ``g``; defaults to the backbone's feature size (as in the paper).
        temperature: NT-Xent temperature (0.5 in the paper for CIFAR-10; 0.1-0.2 for ImageNet).
        gather_distributed: gather projections from all processes so negatives span the global batch.
    """

    method = "simclr"

    def __init__(self, backbone: StagedBackbone, proj_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        self.backbone = backbone
        hidden = hidden_dim or backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(backbone.feature_dim, hidden, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.project(x0), self.project(x1))


class BYOL(nn.Module):
    """BYOL (Grill et al. 2020): online ``q(g(f(x)))`` regresses the momentum network's ``g'(f'(x'))``.

    Args:
        backbone: the online encoder ``f``; a deep copy becomes the momentum encoder ``f'``.
        proj_dim: projection (and prediction) output size (256 in the paper).
        hidden_dim: hidden width of projector and predictor (4096 in the paper; smaller for CPU nets).
        momentum_base: EMA momentum at step 0; rises to 1 on a cosine schedule (0.996 in the paper for
            ImageNet; 0.99 for short CIFAR runs).

    Call :meth:`update_momentum` after each optimizer step.
    """

    method = "byol"

    def __init__(self, backbone: StagedBackbone, proj_dim: int = 256, hidden_dim: int = 4096,
                 momentum_base: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum_base <= 1.0:
            raise ValueError(f"momentum_base must be in [0, 1], got {momentum_base}")
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(backbone.feature_dim, hidden_dim, proj_dim)
        self.prediction_head = BYOLPredictionHead(proj_dim, hidden_dim, proj_dim)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.momentum_base = momentum_base
        self.criterion = NegativeCosineSimilarity()

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.online(x0), self.online(x1)
        z0, z1 = self.target(x0), self.target(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    @torch.no_grad()
    def update_momentum(self, step: int, max_steps: int) -> float:
        """EMA-update the momentum network; returns the momentum used (cosine from base to 1)."""
        m = float(cosine_schedule(step, max(1, max_steps), self.momentum_base, 1.0))
        # lightly's update_momentum, ema = m * ema + (1 - m) * online, as one foreach lerp over all
        # parameters: its Python loop launches two GPU kernels per tensor, which bounded the step at 32 px.
        ema, online = self._momentum_pairs()
        torch._foreach_lerp_(ema, online, 1.0 - m)
        return m

    def _momentum_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ema = [p.data for p in self.backbone_momentum.parameters()] + \
              [p.data for p in self.projection_head_momentum.parameters()]
        online = [p.data for p in self.backbone.parameters()] + [p.data for p in self.projection_head.parameters()]
        return ema, online


SSL_METHODS = {"simclr": SimCLR, "byol": BYOL}


def build_ssl_model(method: str, backbone: StagedBackbone, proj_dim: int | None = None,
                    hidden_dim: int | None = None, **kwargs: Any) -> nn.Module:
    """Build ``simclr`` or ``byol`` around ``backbone``; ``proj_dim``/``hidden_dim`` default per method.

    Extra keyword arguments go to the model (``temperature`` for SimCLR, ``momentum_base`` for BYOL).
    """
    if method == "simclr":
        return SimCLR(backbone, proj_dim=proj_dim or 128, hidden_dim=hidden_dim, **kwargs)
    if method == "byol":
        return BYOL(backbone, proj_dim=proj_dim or 256, hidden_dim=hidden_dim or 4096, **kwargs)
    raise ValueError(f"ssl.method: unknown method {method!r}; choose from {sorted(SSL_METHODS)}")


# ---------------------------------------------------------------------------------- encoder files


def _unique_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without aliases (timm backbones expose the same tensors under two names)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for k, v in backbone.state_dict().items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if ident is not None and ident in seen:
            continue
        if ident is not None:
            seen.add(ident)
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def save_backbone(path: str | os.PathLike, backbone: StagedBackbone, meta: dict[str, Any] | None = None,
                  backbone_kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``backbone``'s tensors to ``path`` (safetensors, atomically) with metadata.

    Metadata: ``format``, ``backbone`` (name), ``backbone_kwargs`` (JSON; from the argument, else
    ``meta["backbone_kwargs"]``, else the ``backbone_kwargs`` attribute set by :func:`make_backbone`),
    ``sha256`` of the tensors (so damage or edits are caught on load; an integrity check, not a
    signature), plus every other ``meta`` entry (method, epochs, image size, normalisation...) as JSON.
    The kwargs are checked by rebuilding the backbone and comparing tensor shapes.
    """
    from safetensors.torch import save_file


    meta = dict(meta or {})
    name = meta.pop("backbone", None) or backbone.backbone_name
    if not name:
        raise ValueError("save_backbone: the backbone has no name; pass meta={'backbone': <name>}")
    kwargs = backbone_kwargs if backbone_kwargs is not None else meta.pop("backbone_kwargs", None)
    meta.pop("backbone_kwargs", None)
    if kwargs is None:
        kwargs = getattr(backbone, "backbone_kwargs", {})
    state = _unique_state(backbone)
    rebuilt = _unique_state(create_backbone(name, **kwargs))
    mismatch = [k for k in set(state) | set(rebuilt)
                if k not in state or k not in rebuilt or state[k].shape != rebuilt[k].shape]
    if mismatch:
        raise ValueError(f"save_backbone: create_backbone({name!r}, **{kwargs}) does not rebuild this backbone "
                         f"(differs at {sorted(mismatch)[:3]}); pass the kwargs it was built with")
    header = {"format": ENCODER_FORMAT, "backbone": name, "backbone_kwargs": json.dumps(kwargs, sort_keys=True),
              "sha256": _digest(state)}
    for k, v in meta.items():
        header[k] = json.dumps(v, sort_keys=True, default=str)
    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


def read_backbone_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an encoder file (JSON values decoded), without loading tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path}: not a readable safetensors encoder file ({type(exc).__name__}: {exc})") from None
    if raw.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not an sslguard encoder file (format={raw.get('format')!r}, "
                         f"expected {ENCODER_FORMAT!r})")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("format", "backbone", "sha256"):
            out[k] = v
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: metadata entry {k!r} is not valid JSON") from None
    return out


def load_backbone(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> StagedBackbone:
    """Rebuild the backbone named in ``path``'s metadata and load its tensors (safetensors only).

    Raises ``FileNotFoundError`` when absent and ``ValueError`` naming the file when it is not a
    safetensors encoder, its checksum does not match (edited or damaged), or its tensors do not fit.
    The returned backbone is in eval mode and carries ``encoder_meta`` (the decoded metadata).
    """
    from safetensors.torch import load_file

    meta = read_backbone_meta(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise ValueError(f"{path}: could not read tensors ({type(exc).__name__}: {exc})") from None
    if _digest(state) != meta.get("sha256"):
        raise ValueError(f"{path}: tensor checksum does not match the metadata; the file was modified or damaged")
    kwargs = meta.get("backbone_kwargs") or {}
    backbone = make_backbone(meta["backbone"], **kwargs)
    expected = _unique_state(backbone)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not fit {meta['backbone']}({kwargs}): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{path}: tensor shapes do not fit {meta['backbone']}({kwargs}) at {bad[:3]}")
    # strict=False only because aliases dropped at save (timm) are filled through their shared storage
    backbone.load_state_dict(state, strict=False)
    backbone.encoder_meta = meta
    return backbone.to(map_location).eval()
