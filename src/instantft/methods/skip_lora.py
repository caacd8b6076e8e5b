"""Skip-LoRA, Skip2-LoRA and InstantFT (Matsutani 2024; Sugiura & Matsutani 2025, §3).

Each layer k = 1..5 gets an adapter from its flattened input x_{k-1} straight to the logits:

    y = f(x) + scale · Σ_k B_k A_k x_{k-1}       A_k: r × d_{k-1} (Gaussian), B_k: C × r (zero)

Only the adapters learn, and the loss gradient reaches them without passing through the base
network, so there is no backpropagation through it. With g = (softmax(y) − onehot)/batch and
h_k = A_k x_{k-1}:

    ∂B_k = scale · gᵀ h_k        ∂A_k = scale · (g B_k)ᵀ x_{k-1}

These gradients are written by hand (no autograd in the loop). The three methods differ only in
where x1..x4 and f(x) come from:

- ``skip-lora``: a base forward every step;
- ``skip2-lora``: the fp32 Forward Cache (:mod:`instantft.cache`) - the base runs once a sample;
- ``instantft``: the same cache stored in NF4 (:mod:`instantft.nf4`), dequantised on read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import torch

from instantft.cache import CacheSource, ForwardCache, Storage
from instantft.data import ImageSet
from instantft.engine import resolve_engine
from instantft.methods.base import (
    FineTuneConfig,
    FitResult,
    Method,
    check_loss,
    init_lora_a,
    register,
    schedule,
)
from instantft.models import LeNet5

FILL_BATCH = 1024


class SkipAdapters:
    """The five skip adapters and their hand-written forward, backward and SGD step."""

    def __init__(self, in_sizes: list[int], num_classes: int, config: FineTuneConfig, gen: torch.Generator) -> None:
        self.scale = config.scale
        self.A = [torch.empty(config.rank, d) for d in in_sizes]
        self.B = [torch.zeros(num_classes, config.rank) for _ in in_sizes]
        for a in self.A:
            init_lora_a(a, config, gen)

    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, (a, b) in enumerate(zip(self.A, self.B, strict=True), start=1):
            out[f"skip{k}.A"], out[f"skip{k}.B"] = a, b
        return out

    def delta(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """scale·Σ B_k A_k x_k and the rank-r projections h_k = A_k x_k (kept for the backward)."""
        hs = [x @ a.t() for x, a in zip(xs, self.A, strict=True)]
        out = hs[0] @ self.B[0].t()
        for h, b in zip(hs[1:], self.B[1:], strict=True):
            out.addmm_(h, b.t())
        return out.mul_(self.scale), hs

    @staticmethod
    def output_grad(y: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """g = (softmax(y) − onehot)/batch and the mean cross-entropy."""
        m = y.max(1, keepdim=True).values
        e = (y - m).exp_()
        s = e.sum(1, keepdim=True)
        rows = torch.arange(len(labels))
        loss = float((s.log().squeeze(1) + m.squeeze(1) - y[rows, labels]).mean())
        g = e.div_(s)
        g[rows, labels] -= 1.0
        return g.div_(len(labels)), loss

    def grads(
        self, xs: list[torch.Tensor], hs: list[torch.Tensor], g: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(∂A_k, ∂B_k) for k = 1..5 from the output gradient g."""
        dB = [self.scale * (g.t() @ h) for h in hs]
        dA = [self.scale * ((g @ b).t() @ x) for b, x in zip(self.B, xs, strict=True)]
        return dA, dB

    def sgd_step(self, xs: list[torch.Tensor], base_logits: torch.Tensor, labels: torch.Tensor, lr: float) -> float:
        """One SGD step on a batch; returns the loss before the update."""
        delta, hs = self.delta(xs)
        g, loss = self.output_grad(base_logits + delta, labels)
        dA, dB = self.grads(xs, hs, g)
        for a, b, da, db in zip(self.A, self.B, dA, dB, strict=True):
            a.sub_(da, alpha=lr)
            b.sub_(db, alpha=lr)
        return loss


class _SkipMethod(Method):
    #: None: run the base network every step; otherwise the Forward Cache's storage
    cache_storage: ClassVar[Storage | None] = None

    def __init__(self, base: LeNet5, config: FineTuneConfig) -> None:
        super().__init__(base, config)
        self.in_sizes = self.base.layer_input_sizes()
        self.num_classes = self.base.config.num_classes
        gen = torch.Generator().manual_seed(config.adapter_seed)
        self.adapters = SkipAdapters(self.in_sizes, self.num_classes, config, gen)
        self.cache: ForwardCache | None = None

    def trainable(self) -> dict[str, torch.Tensor]:
        return self.adapters.state()

    def new_cache(self, capacity: int) -> ForwardCache:
        assert self.cache_storage is not None
        return ForwardCache(
            [*self.in_sizes[1:], self.num_classes], capacity, self.cache_storage, self.config.cache_max_bytes
        )

    @torch.no_grad()
    def base_rows(self, images: torch.Tensor) -> torch.Tensor:
        """The cache rows [x1 | x2 | x3 | x4 | f(x)] of a batch of images (one base forward)."""
        xs, logits = self.base.trace(images)
        return torch.cat([x.flatten(1) for x in xs[1:]] + [logits], dim=1)

    def fill_cache(self, data: ImageSet, keys: torch.Tensor | None = None) -> None:
        """Run the base forward for the samples (all by default) whose keys are not cached."""
        assert self.cache is not None
        rows = torch.arange(len(data)) if keys is None else keys
        todo = rows[~self.cache.contains(data.indices[rows])]
        for i in range(0, len(todo), FILL_BATCH):
            chunk = todo[i : i + FILL_BATCH]
            self.cache.put(data.indices[chunk], self.base_rows(data.images[chunk]))

    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        """Fine-tune the adapters. With a batched cache fill (skip2-lora, instantft) this runs the
        fast engine chosen by ``config.engine`` (:mod:`instantft.engine`: compiled numba loop, or
        plain-torch fast path); ``engine="reference"``, skip-lora and ``cache_fill="lazy"`` use
        :meth:`reference_fit`. Both train the same adapters (tests/test_engine.py)."""
        backend = resolve_engine(self.config.engine)
        if backend != "reference" and self.cache_storage is not None and self.config.cache_fill == "batched":
            from instantft.engine.fit import fast_fit

            return fast_fit(self, data, on_step, backend)
        return self.reference_fit(data, on_step)

    @torch.no_grad()
    def reference_fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        """The plain loop: one torch-op step per batch, the reference the fast engine matches."""
        result = FitResult()
        start = time.perf_counter()
        if self.cache_storage is not None:
            if self.cache is None:
                self.cache = self.new_cache(len(data))
            self.cache.bind(CacheSource(self.base_fingerprint, data.fingerprint))
            if self.config.cache_fill == "batched":
                self.fill_cache(data)
        for epoch, step, rows in schedule(len(data), self.config):
            images = data.images[rows]
            if self.cache is None:
                xs, base_logits = self.base.trace(images)
                xs = [x.flatten(1) for x in xs]
            else:
                if self.config.cache_fill == "lazy":
                    self.fill_cache(data, rows)
                *cached, base_logits = self.cache.split(self.cache.get(data.indices[rows]))
                xs = [images.flatten(1), *cached]
            loss = self.adapters.sgd_step(xs, base_logits, data.labels[rows], self.config.lr)
            check_loss(loss, epoch, step)
            result.add_step(epoch, loss)
            if on_step:
                on_step(epoch, step)
        result.end()
        result.seconds = time.perf_counter() - start
        result.cache_bytes = self.cache.nbytes if self.cache is not None else 0
        return result

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            xs, base_logits = self.base.trace(images[i : i + batch_size])
            out.append(base_logits + self.adapters.delta([x.flatten(1) for x in xs])[0])
        return torch.cat(out)

    @torch.no_grad()
    def gradients(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The hand-written gradients on one batch, by tensor name (for tests and analysis)."""
        xs, base_logits = self.base.trace(images)
        xs = [x.flatten(1) for x in xs]
        delta, hs = self.adapters.delta(xs)
        g, _ = SkipAdapters.output_grad(base_logits + delta, labels)
        dA, dB = self.adapters.grads(xs, hs, g)
        out: dict[str, torch.Tensor] = {}
        for k, (da, db) in enumerate(zip(dA, dB, strict=True), start=1):
            out[f"skip{k}.A"], out[f"skip{k}.B"] = da, db
        return out


@register
class SkipLoRA(_SkipMethod):
    name = "skip-lora"
    description = "adapters from every layer to the logits; base forward every step"


@register
class Skip2LoRA(_SkipMethod):
    name = "skip2-lora"
    description = "skip-lora + the fp32 Forward Cache"
    cache_storage = "fp32"


@register
class InstantFT(_SkipMethod):
    name = "instantft"
    description = "skip2-lora with the cache in 4-bit NF4"
    cache_storage = "nf4"
