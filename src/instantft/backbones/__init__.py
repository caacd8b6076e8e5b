"""Any ``nn.Module`` classifier plus its taps (:class:`Backbone`), and the registered in-tree
backbones: LeNet-5 (the paper's), a 3-layer MLP and a ResNet-8 with BatchNorm."""

from instantft.backbones.base import ADAPTABLE, Backbone, Layer, Tap, TapSpec, as_backbone, exact_taps
from instantft.backbones.registry import create_backbone, list_backbones

__all__ = [
    "ADAPTABLE",
    "Backbone",
    "Layer",
    "Tap",
    "TapSpec",
    "as_backbone",
    "create_backbone",
    "exact_taps",
    "list_backbones",
]
