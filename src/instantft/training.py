"""What every training loop shares: the run's hyper-parameters, the batch order, divergence
checks and the result bookkeeping. Below the engine and the methods, so both use it.

Every method trains with plain SGD and softmax cross-entropy (paper §5.1) and sees the same
batches for the same seed, so runs can be compared step for step (Skip-LoRA and Skip2-LoRA
train identical adapters).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from instantft.errors import InstantFTError

Init = Literal["gaussian", "kaiming"]


@dataclass(frozen=True)
class FineTuneConfig:
    """Hyper-parameters of a fine-tuning run. Defaults are the paper's (§5.1) where it states
    them; the rest are documented choices (see README, "Defaults the paper leaves open")."""

    epochs: int = 10
    batch_size: int = 20
    lr: float = 0.1  # 0.025 for SVHN
    rank: int = 4
    scale: float = 1.0  # LoRA output multiplier (alpha / r)
    init: Init = "gaussian"  # A ~ N(0, init_std²), or PEFT's kaiming-uniform; B = 0
    init_std: float = 0.1
    seed: int = 0  # batch order and (unless init_seed is set) adapter init
    init_seed: int | None = None
    drop_last: bool = True  # 1024 = 51 × 20 + 4: skip the 4-sample step, as #iter = N / batch
    cache_fill: Literal["batched", "lazy"] = "batched"
    cache_max_bytes: int | None = None
    engine: str = "auto"  # skip methods' training loop: instantft.engine.ENGINES (checked by resolve_engine)
    last_layer: str | None = None  # ft-last / lora-last: the module to train (default: the last Linear run)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.rank >= 1, f"--rank must be >= 1, got {self.rank}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a finite number > 0, got {self.lr}"),
            (self.init in ("gaussian", "kaiming"), f"--init must be gaussian or kaiming, got {self.init!r}"),
            (self.init_std > 0, f"--init-std must be > 0, got {self.init_std}"),
            (self.cache_fill in ("batched", "lazy"), f"--cache-fill must be batched or lazy, got {self.cache_fill!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InstantFTError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def adapter_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed


def epoch_batches(n: int, config: FineTuneConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of each batch of one epoch (a fresh shuffle per epoch)."""
    perm = torch.randperm(n, generator=generator)
    stop = n - n % config.batch_size if config.drop_last else n
    return [perm[i : i + config.batch_size] for i in range(0, stop, config.batch_size)]


def schedule(n: int, config: FineTuneConfig) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, step, rows) over the whole run: every method uses this order for a seed."""
    if config.batch_size > n:
        raise InstantFTError(f"--batch-size {config.batch_size} is larger than the {n} fine-tuning samples")
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
