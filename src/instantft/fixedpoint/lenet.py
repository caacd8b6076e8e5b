"""The frozen LeNet-5 (:mod:`instantft.models.lenet`) in integer arithmetic: the Conv-MP and FC
modules of the paper's core (§4.1).

Weights and biases are words of the parameter format, activations words of the activation format.
Each conv output pixel / FC output is one MAC with an exact accumulator seeded by the bias,
rounded once into the activation format (what Conv writes to its line buffer); ReLU and the 2×2
max-pool then act on words, exactly (both commute with a monotone rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instantft.fixedpoint.formats import FixedPointConfig
from instantft.fixedpoint.ops import Counters, matmul, quantize, relu
from instantft.models import LeNet5, pool2x2

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


class FixedLeNet:
    """A frozen backbone's parameters as words, and its integer forward pass."""

    def __init__(self, model: LeNet5, config: FixedPointConfig, counters: Counters | None = None) -> None:
        self.config = config
        self.padding = model.config.conv1_padding
        self.weights: dict[str, torch.Tensor] = {}
        self.biases: dict[str, torch.Tensor] = {}
        for name in LAYERS:
            layer = getattr(model, name)
            w, b = layer.weight.detach(), layer.bias.detach()
            self.weights[name] = quantize(w, config.param, config.rounding, counters, f"param.{name}.weight")
            self.biases[name] = quantize(b, config.param, config.rounding, counters, f"param.{name}.bias")

    def conv(self, x: torch.Tensor, name: str, padding: int, counters: Counters | None) -> torch.Tensor:
        """2-D convolution (stride 1) as im2col + MAC, output words (N, C_out, H', W')."""
        c = self.config
        w = self.weights[name]
        if padding:
            x = F.pad(x, (padding,) * 4)
        k = w.shape[-1]
        n, _, h, wd = x.shape
        ho, wo = h - k + 1, wd - k + 1
        cols = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
        wt = w.reshape(len(w), -1).t()
        out = matmul(cols, c.act, wt, c.param, c.act, c.rounding, counters, f"{name}.out", self.biases[name], c.param)
        return out.view(n, ho, wo, -1).permute(0, 3, 1, 2)

    def fc(self, x: torch.Tensor, name: str, counters: Counters | None) -> torch.Tensor:
        c = self.config
        wt = self.weights[name].t()
        return matmul(x, c.act, wt, c.param, c.act, c.rounding, counters, f"{name}.out", self.biases[name], c.param)

    def trace(self, x0: torch.Tensor, counters: Counters | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Layer inputs [x0..x4] (x0 as given, x1 (N,6,14,14), x2..x4 flat) and the base logits, as words."""
        x1 = pool2x2(relu(self.conv(x0, "conv1", self.padding, counters)))
        x2 = pool2x2(relu(self.conv(x1, "conv2", 0, counters))).flatten(1)
        x3 = relu(self.fc(x2, "fc1", counters))
        x4 = relu(self.fc(x3, "fc2", counters))
        return [x0, x1, x2, x3, x4], self.fc(x4, "fc3", counters)
