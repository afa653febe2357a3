"""Backbones with uniform access to intermediate layers.

Every backbone built here is a :class:`StagedBackbone`: an ordered list of named stages followed by
global average pooling. ``forward`` gives pooled features ``(N, feature_dim)``; ``forward_features``
gives the last stage's map ``(N, C, h, w)`` (Grad-CAM, l-infinity pruning); ``forward_intermediates``
gives every stage's output (critical-layer analysis, heatmaps).

Names: ``convnet4`` (a ~0.4M-parameter CPU net for tests and CPU benchmarks), ``cifar_resnet18``
(3x3 stem, no max-pool, for 32 px inputs; ``width`` scales channels), ``resnet18`` / ``resnet50``
(torchvision, ImageNet stem), and ``timm:<model>`` for any timm model that has
``forward_intermediates`` (most CNNs and ViTs in timm >= 1.0).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES: dict[str, Callable[..., "StagedBackbone"]] = {}


def register_backbone(name: str):
    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


class StagedBackbone(nn.Module):
    def __init__(self, stages: list[tuple[str, nn.Module]], feature_dim: int, name: str = ""):
        super().__init__()
        self.stage_names = [n for n, _ in stages]
        self.stages = nn.ModuleDict(stages)
        self.feature_dim = feature_dim
        self.backbone_name = name

    @property
    def last_stage(self) -> nn.Module:
        return self.stages[self.stage_names[-1]]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for n in self.stage_names:
            x = self.stages[n](x)
        return x

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.stage_names:
            x = self.stages[n](x)
            out[n] = x
        return out

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("convnet4")
def convnet4(width: int = 32, **_: object) -> StagedBackbone:
    """Four conv-BN-ReLU blocks (width, 2w, 4w, 8w), max-pool after the first three."""
    w = [width, 2 * width, 4 * width, 8 * width]
    stages = [
        ("block1", nn.Sequential(_conv_bn_relu(3, w[0]), nn.MaxPool2d(2))),
        ("block2", nn.Sequential(_conv_bn_relu(w[0], w[1]), nn.MaxPool2d(2))),
        ("block3", nn.Sequential(_conv_bn_relu(w[1], w[2]), nn.MaxPool2d(2))),
        ("block4", _conv_bn_relu(w[2], w[3])),
    ]
    return StagedBackbone(stages, w[3], "convnet4")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@register_backbone("cifar_resnet18")
def cifar_resnet18(width: int = 64, **_: object) -> StagedBackbone:
    """CIFAR ResNet-18 (He et al. 2016 with the 3x3 stride-1 stem and no max-pool used for 32 px images).

    Written out because torchvision's ResNet has no channel-width knob for BasicBlock; the blocks
    follow torchvision's naming (conv1/bn1/conv2/bn2/downsample) so zennit's ResNet canonizer applies.
    """
    w = [width, 2 * width, 4 * width, 8 * width]
    stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
    stages: list[tuple[str, nn.Module]] = [("stem", stem)]
    cin = w[0]
    for i, cout in enumerate(w):
        stride = 1 if i == 0 else 2
        stages.append((f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))))
        cin = cout
    return StagedBackbone(stages, w[3], "cifar_resnet18")


def _torchvision_resnet(name: str) -> StagedBackbone:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [("stem", stem)] + [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
    return StagedBackbone(stages, net.fc.in_features, name)


@register_backbone("resnet18")
def resnet18(**_: object) -> StagedBackbone:
    """torchvision ResNet-18 with the ImageNet stem (224 px inputs), randomly initialised."""
    return _torchvision_resnet("resnet18")


@register_backbone("resnet50")
def resnet50(**_: object) -> StagedBackbone:
    """torchvision ResNet-50 with the ImageNet stem (224 px inputs), randomly initialised."""
    return _torchvision_resnet("resnet50")


class _TimmStage(nn.Module):
    """Runs a timm model's ``forward_intermediates`` once and hands out one output per stage."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class TimmBackbone(StagedBackbone):
    def __init__(self, model_name: str, **kwargs: object):
        import timm

        model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        super().__init__([("features", _TimmStage(model))], model.num_features, f"timm:{model_name}")
        self.model = self.stages["features"].model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        if f.ndim == 3:  # ViT tokens (N, T, C) -> drop prefix tokens, fold patches into a map
            n_prefix = getattr(self.model, "num_prefix_tokens", 1)
            tokens = f[:, n_prefix:]
            side = int(round(tokens.shape[1] ** 0.5))
            f = tokens.transpose(1, 2).reshape(f.shape[0], f.shape[2], side, side)
        return f

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if hasattr(self.model, "forward_intermediates"):
            feats = self.model.forward_intermediates(x, intermediates_only=True)
            return {f"stage{i}": f for i, f in enumerate(feats)}
        return {"features": self.forward_features(x)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def create_backbone(name: str, **kwargs: object) -> StagedBackbone:
    """Build a backbone by name (see the module docstring); ``timm:<model>`` goes to timm."""
    if name.startswith("timm:"):
        return TimmBackbone(name.split(":", 1)[1], **kwargs)
    try:
        fn = BACKBONES[name]
    except KeyError:
        raise ValueError(f"model.backbone: unknown backbone {name!r}; choose from {sorted(BACKBONES)} or timm:<name>") from None
    return fn(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
