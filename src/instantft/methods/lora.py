"""LoRA-All and LoRA-Last (paper §2): a dense low-rank update (:class:`instantft.adapters.LoRALayer`)
on frozen layers, trained with autograd through the whole network.

LoRA-All adapts the module of every tap that is a ``Conv2d`` or ``Linear`` (with ``taps="auto"``:
every such module the forward runs, shared-input shortcuts aside); LoRA-Last the last ``Linear``
the forward runs (or ``config.last_layer``).
"""

from __future__ import annotations

import torch

from instantft.adapters import LoRALayer
from instantft.backbones import Layer
from instantft.errors import InstantFTError
from instantft.methods.base import AutogradMethod, register


class _LoRAMethod(AutogradMethod):
    def adapted(self) -> list[Layer]:
        """The layers that get an adapter, in forward order."""
        raise NotImplementedError

    def setup(self) -> None:
        config = self.config
        gen = torch.Generator().manual_seed(config.adapter_seed)
        self.model = self.base
        layers = self.adapted()
        if not layers:
            model = type(self.model).__name__
            raise InstantFTError(f"{self.name}: {model} has no tapped Conv2d or Linear layer to adapt")
        for layer in layers:
            parent_name, _, child = layer.name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            wrapped = LoRALayer(getattr(parent, child), layer.in_size, layer.out_size, config, gen)
            setattr(parent, child, wrapped)

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


@register
class LoRAAll(_LoRAMethod):
    name = "lora-all"
    description = "a LoRA adapter on every tapped layer, backprop through the network"

    def adapted(self) -> list[Layer]:
        by_name = {layer.name: layer for layer in self.backbone.layers}
        return [by_name[t.name] for t in self.backbone.taps if t.point == "input" and t.name in by_name]


@register
class LoRALast(_LoRAMethod):
    name = "lora-last"
    description = "LoRA on the last Linear layer only"

    def adapted(self) -> list[Layer]:
        try:
            layer = self.backbone.last_linear(self.config.last_layer)
        except InstantFTError as exc:
            raise InstantFTError(f"lora-last: {exc}") from None
        return [layer] if layer is not None else []
