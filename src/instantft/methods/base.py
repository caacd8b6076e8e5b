"""What every fine-tuning method shares: its config, the batch order, the registry, and the
ordinary autograd training loop the baselines use.

Every method starts from a frozen copy of the pre-trained backbone and trains with plain SGD and
softmax cross-entropy (paper §5.1). Methods see the same batches for the same seed, so their
runs can be compared step for step (Skip-LoRA and Skip2-LoRA train identical adapters).
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from instantft.data import ImageSet
from instantft.errors import InstantFTError
from instantft.models import LeNet5, model_fingerprint, predict

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
    engine: Literal["auto", "numba", "torch", "reference"] = "auto"  # skip methods' training loop (instantft.engine)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.rank >= 1, f"--rank must be >= 1, got {self.rank}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a finite number > 0, got {self.lr}"),
            (self.init in ("gaussian", "kaiming"), f"--init must be gaussian or kaiming, got {self.init!r}"),
            (self.init_std > 0, f"--init-std must be > 0, got {self.init_std}"),
            (self.cache_fill in ("batched", "lazy"), f"--cache-fill must be batched or lazy, got {self.cache_fill!r}"),
            (
                self.engine in ("auto", "numba", "torch", "reference"),
                f"--engine must be auto, numba, torch or reference, got {self.engine!r}",
            ),
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


def init_lora_a(a: torch.Tensor, config: FineTuneConfig, generator: torch.Generator) -> None:
    """Initialise a LoRA A matrix (rank × d_in) in place; B stays zero so ΔW = 0 at step 0."""
    with torch.no_grad():
        if config.init == "gaussian":
            a.normal_(0.0, config.init_std, generator=generator)
        else:  # PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)) -> U(-1/sqrt(d_in), 1/sqrt(d_in))
            bound = 1.0 / math.sqrt(a.shape[1])
            a.uniform_(-bound, bound, generator=generator)


class DivergedError(InstantFTError):
    """The loss became NaN or infinite; no adapter is written."""


def check_loss(loss: float, epoch: int, step: int) -> None:
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


class Method(ABC):
    """A fine-tuning method bound to a frozen copy of a pre-trained backbone."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, base: LeNet5, config: FineTuneConfig) -> None:
        self.config = config
        self.base = copy.deepcopy(base).eval()
        self.base_fingerprint = model_fingerprint(base)
        for p in self.base.parameters():
            p.requires_grad_(False)

    @abstractmethod
    def trainable(self) -> dict[str, torch.Tensor]:
        """The tensors this method trains, by name (what an adapter file holds)."""

    def trainable_parameters(self) -> int:
        return sum(t.numel() for t in self.trainable().values())

    @abstractmethod
    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        """Fine-tune on ``data``; ``on_step(epoch, step)`` is called after each step."""

    @abstractmethod
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the fine-tuned model (no grad)."""

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable()
        if set(state) != set(own):
            raise InstantFTError(f"adapter tensors {sorted(state)} do not match method {self.name} ({sorted(own)})")
        with torch.no_grad():
            for k, v in state.items():
                if v.shape != own[k].shape:
                    raise InstantFTError(
                        f"adapter tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                    )
                own[k].copy_(v)


class AutogradMethod(Method):
    """A method written the usual way: module forward, autograd, ``torch.optim.SGD``."""

    model: nn.Module

    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        params = list(self.trainable().values())
        result = FitResult()
        start = time.perf_counter()
        if not params:
            return result
        self.model.train()
        opt = torch.optim.SGD(params, lr=self.config.lr)
        for epoch, step, rows in schedule(len(data), self.config):
            loss = F.cross_entropy(self.model(data.images[rows]), data.labels[rows])
            value = float(loss.detach())
            check_loss(value, epoch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.add_step(epoch, value)
            if on_step:
                on_step(epoch, step)
        result.end()
        result.seconds = time.perf_counter() - start
        self.model.eval()
        return result

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return predict(self.model, images)

    def gradients(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """∂ mean cross-entropy / ∂ each trainable tensor on one batch (for tests and analysis)."""
        params = self.trainable()
        for p in params.values():
            p.grad = None
        F.cross_entropy(self.model(images), labels).backward()
        grads = {k: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for k, p in params.items()}
        for p in params.values():
            p.grad = None
        return grads


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (CLI, reproduce, tests)."""
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(METHODS)


def create(name: str, base: LeNet5, config: FineTuneConfig) -> Method:
    if name not in METHODS:
        raise InstantFTError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](base, config)
