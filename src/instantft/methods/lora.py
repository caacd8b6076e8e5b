"""LoRA-All and LoRA-Last (paper §2): a low-rank update ΔW = B·A on a frozen layer.

    y = W x + b + scale · B (A x)        A: r × d_in (Gaussian), B: d_out × r (zero)

B = 0 makes the adapter a no-op at step 0. For a conv layer the adapter is a dense map from the
flattened layer input to the flattened pre-pool conv output; that is what gives the paper's
parameter counts (conv1: r·(784 + 4704)). Gradients flow back through the whole network.
"""

from __future__ import annotations

import torch
from torch import nn

from instantft.methods.base import AutogradMethod, FineTuneConfig, init_lora_a, register
from instantft.models import LeNet5


class LoRALayer(nn.Module):
    """Wrap a frozen ``nn.Linear`` or ``nn.Conv2d`` with a dense low-rank update."""

    def __init__(self, layer: nn.Module, d_in: int, d_out: int, config: FineTuneConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.layer = layer
        self.scale = config.scale
        self.A = nn.Parameter(torch.empty(config.rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, config.rank))
        init_lora_a(self.A, config, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        delta = (x.flatten(1) @ self.A.t()) @ self.B.t()
        return y + self.scale * delta.view_as(y)


class _LoRAMethod(AutogradMethod):
    #: indices (0-based) of the layers that get an adapter
    adapted: tuple[int, ...]

    def __init__(self, base: LeNet5, config: FineTuneConfig) -> None:
        super().__init__(base, config)
        gen = torch.Generator().manual_seed(config.adapter_seed)
        self.model = self.base
        names = ["conv1", "conv2", "fc1", "fc2", "fc3"]
        d_in, d_out = self.model.layer_input_sizes(), self.model.layer_output_sizes()
        for k in self.adapted:
            layer = getattr(self.model, names[k])
            setattr(self.model, names[k], LoRALayer(layer, d_in[k], d_out[k], config, gen))

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


@register
class LoRAAll(_LoRAMethod):
    name = "lora-all"
    description = "a LoRA adapter on every layer, backprop through the network"
    adapted = (0, 1, 2, 3, 4)


@register
class LoRALast(_LoRAMethod):
    name = "lora-last"
    description = "LoRA on the last layer only"
    adapted = (4,)
