"""The cooling-fan backbone: the Skip2-LoRA paper's kind of MLP on 512-bin vibration spectra,
with the source's standardisation as its first, frozen module.

    spectrum (1×1×512, raw) -flatten-> standardise (source mean/std) -> 512 -fc,ReLU-> 96
        -fc,ReLU-> 96 -fc-> logits (3 fan types, or 4 fan speeds)

The standardiser holds its statistics as buffers, not parameters: no fine-tuning method trains
it, no adapter taps its input (it is not a Linear), and the data a bundle or a device feeds the
network stays the raw spectra. The C core runs it as a diagonal linear op (engine/chain.py).
"""

from __future__ import annotations

import torch
from torch import nn

from instantft.models.mlp import MLP, MLPConfig

#: the floor of a bin's standard deviation (bin 0 of every spectrum is 0)
STD_FLOOR = 1e-3


class Standardize(nn.Module):
    """``(x - mean) * inv_std`` per feature, with statistics fitted once on the source data."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("inv_std", torch.ones(features))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the statistics from samples ``x`` (N, features...)."""
        flat = x.reshape(len(x), -1).double()
        self.mean.copy_(flat.mean(0))
        self.inv_std.copy_(1.0 / flat.std(0).clamp_min(STD_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class FanMLP(MLP):
    """:class:`MLP` with a :class:`Standardize` right after the flatten."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        c, h, w = config.in_shape
        self.net = nn.Sequential(self.net[0], Standardize(c * h * w), *list(self.net)[1:])

    @property
    def standardize(self) -> Standardize:
        module = self.net[1]
        assert isinstance(module, Standardize)
        return module


FAN_HIDDEN = (96, 96)  # the paper's 512-96-96-C network
