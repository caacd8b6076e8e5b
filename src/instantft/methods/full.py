"""Fine-tuning the backbone's own weights: FT-All, FT-Last, FT-Bias (paper §2), and ``none``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from instantft.data import ImageSet
from instantft.methods.base import AutogradMethod, FineTuneConfig, FitResult, register
from instantft.models import LeNet5


class _WeightsMethod(AutogradMethod):
    """Unfreeze the parameters whose names ``select`` accepts."""

    @staticmethod
    def select(name: str) -> bool:
        raise NotImplementedError

    def __init__(self, base: LeNet5, config: FineTuneConfig) -> None:
        super().__init__(base, config)
        self.model = self.base
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.select(name))

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if self.select(n)}


@register
class NoFineTuning(_WeightsMethod):
    name = "none"
    description = "the pre-trained backbone, unchanged"

    @staticmethod
    def select(name: str) -> bool:
        return False

    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        return FitResult()


@register
class FTAll(_WeightsMethod):
    name = "ft-all"
    description = "every weight and bias"

    @staticmethod
    def select(name: str) -> bool:
        return True


@register
class FTLast(_WeightsMethod):
    name = "ft-last"
    description = "the last layer's weight and bias"

    @staticmethod
    def select(name: str) -> bool:
        return name.startswith("fc3.")


@register
class FTBias(_WeightsMethod):
    name = "ft-bias"
    description = "every bias"

    @staticmethod
    def select(name: str) -> bool:
        return name.endswith(".bias")
