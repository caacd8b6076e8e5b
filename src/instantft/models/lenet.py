"""The paper's LeNet-5-like backbone (Fig. 4), in one file.

    x0 (C×H×W) -conv1,ReLU,pool-> x1 (6×14×14) -conv2,ReLU,pool-> x2 (400)
       -fc1,ReLU-> x3 (120) -fc2,ReLU-> x4 (84) -fc3-> logits (10)

Layer k (k = 1..5) reads x_{k-1}. Methods get every x_k and the logits from one forward pass
(:meth:`LeNet5.trace`): LoRA-All adapts each layer, Skip-LoRA connects each x_{k-1} straight to
the logits, and the Forward Cache stores x1..x4 and the logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LeNetConfig:
    """Input shape and conv1 padding: all that differs between the MNIST and SVHN networks."""

    name: str
    in_channels: int
    image_size: int
    conv1_padding: int
    num_classes: int = 10

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


LENET_CONFIGS: dict[str, LeNetConfig] = {
    "lenet5-mnist": LeNetConfig("lenet5-mnist", in_channels=1, image_size=28, conv1_padding=2),
    "lenet5-svhn": LeNetConfig("lenet5-svhn", in_channels=3, image_size=32, conv1_padding=0),
}
ARCH_FOR_DATASET = {"mnist": "lenet5-mnist", "fmnist": "lenet5-mnist", "svhn": "lenet5-svhn"}


def pool2x2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max-pool, stride 2. With autograd on, ``F.max_pool2d``; in no-grad code two strided
    ``torch.maximum`` calls, ~8× faster on this CPU build and equal in value."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    return torch.maximum(
        torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
        torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]),
    )


class LeNet5(nn.Module):
    """Two conv-ReLU-pool blocks and three FC layers; see the module docstring."""

    def __init__(self, config: LeNetConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.in_channels, 6, 5, padding=config.conv1_padding)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, config.num_classes)

    @property
    def arch(self) -> str:
        return self.config.name

    @property
    def layers(self) -> list[nn.Module]:
        """The five layers in order: conv1, conv2, fc1, fc2, fc3."""
        return [self.conv1, self.conv2, self.fc1, self.fc2, self.fc3]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    def layer_input_sizes(self) -> list[int]:
        """Flattened sizes of x0..x4 (the inputs of layers 1..5)."""
        c = self.config
        s1 = (c.image_size + 2 * c.conv1_padding - 4) // 2
        return [c.in_channels * c.image_size**2, 6 * s1 * s1, 400, 120, 84]

    def layer_output_sizes(self) -> list[int]:
        """Flattened pre-pool outputs of layers 1..5 (the outputs a LoRA-All adapter writes)."""
        c = self.config
        o1 = c.image_size + 2 * c.conv1_padding - 4
        o2 = o1 // 2 - 4
        return [6 * o1 * o1, 16 * o2 * o2, 120, 84, c.num_classes]

    def trace(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One forward pass returning the layer inputs [x0..x4] (x2..x4 flat) and the logits."""
        x1 = pool2x2(F.relu(self.conv1(x)))
        x2 = pool2x2(F.relu(self.conv2(x1))).flatten(1)
        x3 = F.relu(self.fc1(x2))
        x4 = F.relu(self.fc2(x3))
        return [x, x1, x2, x3, x4], self.fc3(x4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x)[1]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Logits for ``images`` in large no-grad batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
