"""Fine-tuning the backbone's own weights: FT-All, FT-Last, FT-Bias (paper §2), and ``none``.

Which parameters each trains is decided on the model itself, for any backbone: FT-Last trains the
last ``Linear`` the forward runs (or ``config.last_layer``), FT-Bias every parameter named
``*.bias`` (BatchNorm's shift included). A method with nothing to train on the model given is an
error at construction, never a silent no-op.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from instantft.data import ImageSet
from instantft.errors import InstantFTError
from instantft.methods.base import AutogradMethod, FitResult, register


class _WeightsMethod(AutogradMethod):
    """Unfreeze the parameters whose names :meth:`select` accepts."""

    def select(self, name: str) -> bool:
        raise NotImplementedError

    def setup(self) -> None:
        self.model = self.base
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.select(name))
        if self.name != "none" and not self.trainable():
            raise InstantFTError(f"{self.name}: {type(self.model).__name__} has no {self.what}")

    what = "parameters"

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if self.select(n)}


@register
class NoFineTuning(_WeightsMethod):
    name = "none"
    description = "the pre-trained backbone, unchanged"

    def select(self, name: str) -> bool:
        return False

    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        return FitResult()


@register
class FTAll(_WeightsMethod):
    name = "ft-all"
    description = "every weight and bias"

    def select(self, name: str) -> bool:
        return True


@register
class FTLast(_WeightsMethod):
    name = "ft-last"
    description = "the last Linear layer's weight and bias"
    what = "Linear layer to fine-tune (name one with last_layer)"
    prefix: str | None = None  # the chosen layer's name + ".", found on the first select()

    def select(self, name: str) -> bool:
        if self.prefix is None:
            try:
                layer = self.backbone.last_linear(self.config.last_layer)
            except InstantFTError as exc:
                raise InstantFTError(f"ft-last: {exc}") from None
            if layer is None:
                return False
            self.prefix = layer.name + "."
        return name.startswith(self.prefix)


@register
class FTBias(_WeightsMethod):
    name = "ft-bias"
    description = "every bias"
    what = "bias parameters"

    def select(self, name: str) -> bool:
        return name.endswith(".bias")
