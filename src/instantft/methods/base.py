"""What every fine-tuning method shares: the :class:`Method` interface, the registry, and the
ordinary autograd training loop the baselines use (config, batch order and divergence checks
are in :mod:`instantft.training`)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from instantft.backbones import Backbone, TapSpec, as_backbone
from instantft.cache import CacheSource, ForwardCache, Storage
from instantft.data import ImageSet
from instantft.engine import resolve_engine
from instantft.errors import InstantFTError
from instantft.fixedpoint.formats import FixedPointConfig
from instantft.models import model_fingerprint
from instantft.settings import Runtime
from instantft.training import (
    DivergedError,
    FineTuneConfig,
    FitResult,
    LossMonitor,
    check_loss,
    epoch_batches,
    schedule,
)

__all__ = [
    "METHODS",
    "AutogradMethod",
    "DivergedError",
    "FineTuneConfig",
    "FitResult",
    "LossMonitor",
    "Method",
    "check_loss",
    "create",
    "epoch_batches",
    "method_names",
    "register",
    "register_variant",
    "schedule",
]

class Method(ABC):
    """A fine-tuning method bound to a private frozen copy of a backbone.

    ``base`` is a :class:`~instantft.backbones.Backbone` or any classifier ``nn.Module`` (wrapped
    with ``taps``; ``example`` is a batch or input shape when the module does not know its own).
    The copy stays in ``eval()`` mode for the whole run, whatever the method trains: BatchNorm
    uses its running statistics and never updates them, dropout is off.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: None: no Forward Cache (the base runs every step, or is trained); else the cache's storage
    cache_storage: ClassVar[Storage | None] = None

    def __init__(
        self,
        base: Backbone | nn.Module,
        config: FineTuneConfig,
        taps: TapSpec = "auto",
        example: Any = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.runtime = runtime or Runtime()
        resolve_engine(self.runtime.engine)  # a missing engine is an error before any work
        self.config = config
        self.backbone = as_backbone(base, taps, example)
        self.base = self.backbone.model
        self.base_fingerprint = model_fingerprint(self.base)
        #: the Forward Cache a cached method fills and trains from (kept across fits on the same data)
        self.cache: ForwardCache | None = None
        self.setup()

    def setup(self) -> None:  # noqa: B027  (a hook: a method that trains nothing of its own adds nothing)
        """Build what the method trains on the frozen copy (called once, by ``__init__``)."""

    # --- the Forward Cache (cached methods) ---------------------------------------------------
    def cache_source(self, data: ImageSet) -> CacheSource:
        """What a cache must have been filled from: the backbone as it is now (weights, buffers
        and tap layout, hashed afresh) and the data."""
        return CacheSource(self.backbone.fingerprint(), data.fingerprint)

    def new_cache(self, capacity: int) -> ForwardCache:
        """An empty Forward Cache of this method's storage, rows laid out by the backbone's taps."""
        if self.cache_storage is None:
            raise InstantFTError(f"{self.name} keeps no Forward Cache")
        return ForwardCache(self.backbone.cache_sizes, capacity, self.cache_storage, self.runtime.cache_max_bytes)

    def drop_stale_cache(self, data: ImageSet) -> None:
        """Forget a cache filled from other data or another state of the base."""
        if self.cache is not None and self.cache.source is not None and self.cache.source != self.cache_source(data):
            self.cache = None

    def report(self) -> dict[str, Any]:
        """What a run of this method reports besides the fit (the fixed-point counters, say)."""
        return {}

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
        trainable = self.trainable()
        params = list(trainable.values())
        result = FitResult(trainable_params=self.trainable_parameters())
        start = time.perf_counter()
        self.backbone.check_input(data.images)
        monitor = LossMonitor()
        self.model.eval()  # frozen parts stay frozen: no BatchNorm statistics update, no dropout
        opt = torch.optim.SGD(params, lr=self.config.lr)
        for epoch, step, rows in schedule(len(data), self.config):
            loss = F.cross_entropy(self.model(data.images[rows]), data.labels[rows])
            value = float(loss.detach())
            monitor.check(value, epoch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.add_step(epoch, value)
            if on_step:
                on_step(epoch, step)
        monitor.check_tensors(trainable)
        result.end()
        result.seconds = time.perf_counter() - start
        return result

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])

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
#: (method name, numerics) -> the method in those numerics: the fixed-point variants
VARIANTS: dict[tuple[str, str], Callable[..., Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (CLI, reproduce, tests)."""
    METHODS[cls.name] = cls
    return cls


def register_variant(numerics: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: the method ``cls.name`` in other ``numerics`` (e.g. ``"fixed"``)."""

    def add(cls: type[Method]) -> type[Method]:
        VARIANTS[cls.name, numerics] = cls
        return cls

    return add


def method_names() -> list[str]:
    return list(METHODS)


def create(
    name: str,
    base: Backbone | nn.Module,
    config: FineTuneConfig | None = None,
    taps: TapSpec = "auto",
    example: Any = None,
    runtime: Runtime | None = None,
    fixed: FixedPointConfig | None = None,
) -> Method:
    """Method ``name`` on a private frozen copy of ``base`` (a Backbone, or any classifier module);
    with ``fixed``, its variant in the FPGA core's fixed-point arithmetic."""
    if name not in METHODS:
        raise InstantFTError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    if fixed is None:
        return METHODS[name](base, config or FineTuneConfig(), taps, example, runtime)
    import instantft.methods.fixed_point  # noqa: F401  (registers the fixed-point variants)

    if (name, "fixed") not in VARIANTS:
        have = ", ".join(n for n, numerics in VARIANTS if numerics == "fixed")
        raise InstantFTError(f"fixed-point numerics is implemented for {have} (the paper's FPGA core), not {name}")
    variant = VARIANTS[name, "fixed"]
    return variant(base, config or FineTuneConfig(), taps, example, runtime, fixed)
