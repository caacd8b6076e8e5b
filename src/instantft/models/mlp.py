"""A 3-layer MLP on flattened images: the kind of network the original Skip2-LoRA paper
fine-tunes (fully connected layers only).

    x (1×28×28) -flatten-> 784 -fc1,ReLU-> 128 -fc2,ReLU-> 64 -fc3-> logits (10)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    name: str
    in_shape: tuple[int, int, int]
    hidden: tuple[int, ...]
    num_classes: int = 10


class MLP(nn.Module):
    """Flatten, then Linear-ReLU blocks, then a Linear classifier, as one ``nn.Sequential``."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.in_shape
        widths = [c * h * w, *config.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in itertools.pairwise(widths):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], config.num_classes))
        self.net = nn.Sequential(*layers)

    @property
    def arch(self) -> str:
        return self.config.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.config.in_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
