"""Backbones (layer access), SSL models and downstream classifiers."""

from sslguard.models.backbones import BACKBONES, StagedBackbone, count_parameters, create_backbone

__all__ = ["BACKBONES", "StagedBackbone", "count_parameters", "create_backbone"]
