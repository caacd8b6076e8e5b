"""The in-tree backbones (LeNet-5, MLP, ResNet-8), their registry and their checkpoints."""

from instantft.models.checkpoint import (
    bundled_checkpoint,
    load_checkpoint,
    model_fingerprint,
    read_metadata,
    save_checkpoint,
)
from instantft.models.fan import FanMLP, Standardize
from instantft.models.lenet import LENET_CONFIGS, LeNet5, LeNetConfig, accuracy, pool2x2, predict
from instantft.models.mlp import MLP, MLPConfig
from instantft.models.resnet import ResNet8, ResNetConfig
from instantft.models.zoo import ARCH_FOR_DATASET, ARCHITECTURES, FAMILIES, arch_for, build, build_lenet

__all__ = [
    "ARCHITECTURES",
    "ARCH_FOR_DATASET",
    "FAMILIES",
    "LENET_CONFIGS",
    "MLP",
    "FanMLP",
    "LeNet5",
    "LeNetConfig",
    "MLPConfig",
    "ResNet8",
    "ResNetConfig",
    "Standardize",
    "accuracy",
    "arch_for",
    "build",
    "build_lenet",
    "bundled_checkpoint",
    "load_checkpoint",
    "model_fingerprint",
    "pool2x2",
    "predict",
    "read_metadata",
    "save_checkpoint",
]
