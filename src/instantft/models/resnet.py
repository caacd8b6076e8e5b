"""A ResNet-8-style CNN with BatchNorm and residual blocks (He et al., 2016, cut down to MNIST):
a stem conv and three basic blocks of two 3×3 convs each, then global average pooling and a
linear classifier (8 weighted layers on the main path).

    x (1×28×28) -stem 8ch-> block(8, stride 1) -> block(16, stride 2) -> block(32, stride 2)
       -avgpool-> 32 -fc-> logits (10)

A block whose width or stride changes has a 1×1 conv + BatchNorm shortcut. Its point here is to
be *unlike* LeNet-5: BatchNorm buffers that must not drift while the backbone is frozen, two
modules reading the same tensor (a block's first conv and its shortcut), and wide early layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ResNetConfig:
    name: str
    in_channels: int = 1
    widths: tuple[int, int, int] = (8, 16, 32)
    image_size: int = 28  # what the taps are traced with (global pooling takes any size)
    num_classes: int = 10


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.stem = nn.Conv2d(config.in_channels, w1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w1)
        self.layer1 = BasicBlock(w1, w1, 1)
        self.layer2 = BasicBlock(w1, w2, 2)
        self.layer3 = BasicBlock(w2, w3, 2)
        self.fc = nn.Linear(w3, config.num_classes)

    @property
    def arch(self) -> str:
        return self.config.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))
