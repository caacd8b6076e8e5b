"""What every training loop shares: the run's hyper-parameters, the batch order, divergence
checks and the result bookkeeping. Below the engine and the methods, so both use it.

Every method trains with plain SGD and softmax cross-entropy (paper §5.1) and sees the same
batches for the same seed, so runs can be compared step for step (Skip-LoRA and Skip2-LoRA
train identical adapters).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from instantft.errors import InstantFTError
from instantft.settings import FineTuneConfig, SettingsError

__all__ = ["DivergedError", "FineTuneConfig", "FitResult", "LossMonitor", "epoch_batches", "schedule"]

def epoch_batches(n: int, config: FineTuneConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of each batch of one epoch (a fresh shuffle per epoch)."""
    perm = torch.randperm(n, generator=generator)
    stop = n - n % config.batch_size if config.drop_last else n
    return [perm[i : i + config.batch_size] for i in range(0, stop, config.batch_size)]


def schedule(n: int, config: FineTuneConfig) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, step, rows) over the whole run: every method uses this order for a seed."""
    if config.batch_size > n:
        raise SettingsError("batch_size", f"{config.batch_size} is larger than the {n} fine-tuning samples")
    gen = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        for step, rows in enumerate(epoch_batches(n, config, gen)):
            yield epoch, step, rows


class DivergedError(InstantFTError):
    """The loss became NaN, infinite or exploded, or the trained tensors are not finite; no
    adapter is written."""


#: a loss above this many times max(1, the first step's loss) counts as diverged
DIVERGENCE_FACTOR = 1e4


class LossMonitor:
    """Divergence checks shared by every training loop: each step's loss must be finite and
    below :data:`DIVERGENCE_FACTOR` × max(1, first step's loss); after the last update the
    trained tensors themselves must be finite (an overflowing final step leaves a finite loss)."""

    def __init__(self) -> None:
        self.bound: float | None = None

    def check(self, loss: float, epoch: int, step: int) -> None:
        where = f"at epoch {epoch + 1}, step {step + 1}"
        if not math.isfinite(loss):
            raise DivergedError(f"training diverged: loss is {loss} {where} (try a lower --lr)")
        if self.bound is None:
            self.bound = DIVERGENCE_FACTOR * max(1.0, loss)
        elif loss > self.bound:
            raise DivergedError(
                f"training diverged: loss {loss:.3g} {where} exceeds {DIVERGENCE_FACTOR:g} × the first step's "
                "(try a lower --lr)"
            )

    def check_all(self, losses: Sequence[float], epochs: Sequence[int], steps: Sequence[int]) -> None:
        for loss, epoch, step in zip(losses, epochs, steps, strict=True):
            self.check(float(loss), epoch, step)

    @staticmethod
    def check_tensors(tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            if not bool(torch.isfinite(t).all()):
                raise DivergedError(
                    f"training diverged: {name} holds non-finite values after the last update (try a lower --lr)"
                )


def check_loss(loss: float, epoch: int, step: int) -> None:
    """A lone finiteness check (no bound): for callers without a run to compare against."""
    if not math.isfinite(loss):
        raise DivergedError(
            f"training diverged: loss is {loss} at epoch {epoch + 1}, step {step + 1} (try a lower --lr)"
        )


@dataclass
class FitResult:
    """What a fit reports. The training loops log each step with :meth:`add_step` and call
    :meth:`end` once, so the mean loss of every epoch is kept the same way by every loop."""

    seconds: float = 0.0
    steps: int = 0
    cache_bytes: int = 0
    trainable_params: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    _epoch: int = field(default=0, repr=False, compare=False)
    _loss_sum: float = field(default=0.0, repr=False, compare=False)
    _count: int = field(default=0, repr=False, compare=False)

    def add_step(self, epoch: int, loss: float) -> None:
        if epoch != self._epoch:
            self.end()
            self._epoch = epoch
        self._loss_sum, self._count = self._loss_sum + loss, self._count + 1
        self.steps += 1

    def end(self) -> None:
        """Close the current epoch's mean loss."""
        self.epoch_losses.append(self._loss_sum / max(self._count, 1))
        self._loss_sum, self._count = 0.0, 0
