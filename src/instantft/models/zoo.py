"""The in-tree architectures by name (a checkpoint records one of these names), and where the
bundled pre-trained weights of each live."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from instantft.errors import InstantFTError
from instantft.models.fan import FAN_HIDDEN, FanMLP
from instantft.models.lenet import LENET_CONFIGS, LeNet5
from instantft.models.mlp import MLP, MLPConfig
from instantft.models.resnet import ResNet8, ResNetConfig

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "lenet5-mnist": lambda: LeNet5(LENET_CONFIGS["lenet5-mnist"]),
    "lenet5-svhn": lambda: LeNet5(LENET_CONFIGS["lenet5-svhn"]),
    "mlp-mnist": lambda: MLP(MLPConfig("mlp-mnist", in_shape=(1, 28, 28), hidden=(128, 64))),
    "resnet8-mnist": lambda: ResNet8(ResNetConfig("resnet8-mnist", in_channels=1, widths=(8, 16, 32))),
    "mlp-fan": lambda: FanMLP(MLPConfig("mlp-fan", in_shape=(1, 1, 512), hidden=FAN_HIDDEN, num_classes=3)),
    "mlp-fan-speed": lambda: FanMLP(MLPConfig("mlp-fan-speed", in_shape=(1, 1, 512), hidden=FAN_HIDDEN, num_classes=4)),
}

#: the architecture a base dataset's backbone has, by family (``lenet5`` is the paper's)
FAMILIES: dict[str, dict[str, str]] = {
    "lenet5": {"mnist": "lenet5-mnist", "fmnist": "lenet5-mnist", "svhn": "lenet5-svhn"},
    "mlp": {"mnist": "mlp-mnist", "fmnist": "mlp-mnist", "fan-silentA": "mlp-fan", "fan-silentB": "mlp-fan",
            "fan-12cm": "mlp-fan-speed"},
    "resnet8": {"mnist": "resnet8-mnist", "fmnist": "resnet8-mnist"},
}
ARCH_FOR_DATASET = FAMILIES["lenet5"]


def build(arch: str) -> nn.Module:
    """A freshly initialised in-tree model (PyTorch's default init)."""
    if arch not in ARCHITECTURES:
        raise InstantFTError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]()


def build_lenet(arch: str) -> LeNet5:
    """A fresh LeNet-5 (``lenet5-mnist`` or ``lenet5-svhn``), for the code that models the paper's
    network in particular (Table 1, the fixed-point datapath, the bench's FLOP counts)."""
    model = build(arch)
    if not isinstance(model, LeNet5):
        raise InstantFTError(f"{arch} is not a LeNet-5 architecture")
    return model


def arch_for(family: str, dataset: str) -> str:
    """The architecture of ``family`` for a base dataset (mnist, fmnist, svhn)."""
    if family not in FAMILIES:
        raise InstantFTError(f"unknown backbone family {family!r}; valid: {', '.join(FAMILIES)}")
    if dataset not in FAMILIES[family]:
        raise InstantFTError(f"no {family} backbone for {dataset!r}; valid: {', '.join(FAMILIES[family])}")
    return FAMILIES[family][dataset]


def bundled_name(family: str, dataset: str) -> str:
    """File name of the bundled checkpoint of ``family`` pre-trained on ``dataset``."""
    return f"{family}-{dataset}.safetensors"
