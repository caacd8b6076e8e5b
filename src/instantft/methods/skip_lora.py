"""Skip-LoRA, Skip2-LoRA and InstantFT (Matsutani 2024; Sugiura & Matsutani 2025, §3): one skip
adapter (:class:`instantft.adapters.SkipAdapters`) from every tap of the frozen backbone straight
to the logits, so there is no backpropagation through the network.

The three methods differ only in where the tap activations and f(x) come from:

- ``skip-lora``: a base forward every step;
- ``skip2-lora``: the fp32 Forward Cache (:mod:`instantft.cache`) - the base runs once a sample;
- ``instantft``: the same cache stored in NF4 (:mod:`instantft.nf4`), dequantised on read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from instantft.adapters import SkipAdapters
from instantft.data import ImageSet
from instantft.engine import resolve_engine
from instantft.methods.base import FitResult, LossMonitor, Method, register, schedule

FILL_BATCH = 1024


class _SkipMethod(Method):
    def setup(self) -> None:
        self.backbone.require_taps(self.name)
        gen = torch.Generator().manual_seed(self.config.adapter_seed)
        self.adapters = SkipAdapters(self.backbone.sizes, self.backbone.num_classes, self.config, gen)

    def trainable(self) -> dict[str, torch.Tensor]:
        return self.adapters.state()

    def cache_rows(self, xs: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """The cache row [cached taps | f(x)] of traced activations."""
        cached = [x for x, t in zip(xs, self.backbone.taps, strict=True) if not t.is_model_input]
        return torch.cat([*cached, logits], dim=1)

    def tap_inputs(self, images: torch.Tensor, cached: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every adapter's input, taking model-input taps from ``images`` and the rest, in order,
        from the cached tensors."""
        it = iter(cached)
        flat = images.reshape(len(images), -1)
        return [flat if t.is_model_input else next(it) for t in self.backbone.taps]

    @torch.no_grad()
    def fill_cache(self, data: ImageSet, keys: torch.Tensor | None = None) -> None:
        """Run the base forward for the samples (all by default) whose keys are not cached."""
        assert self.cache is not None
        rows = torch.arange(len(data)) if keys is None else keys
        todo = rows[~self.cache.contains(data.indices[rows])]
        for i in range(0, len(todo), FILL_BATCH):
            chunk = todo[i : i + FILL_BATCH]
            self.cache.put(data.indices[chunk], self.cache_rows(*self.backbone.trace(data.images[chunk])))

    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        """Fine-tune the adapters. With a batched cache fill (skip2-lora, instantft) this runs the
        C engine (:mod:`instantft.engine`) unless ``runtime.engine`` resolves to ``"reference"``;
        the reference, skip-lora and ``cache_fill="lazy"`` use :meth:`reference_fit`. Both train the same
        adapters (tests/test_engine.py). The C engine always trains A: with ``train_a`` off the run falls
        back to :meth:`reference_fit`, which leaves A as it is."""
        self.backbone.check_input(data.images)
        backend = resolve_engine(self.runtime.engine)
        fast = self.cache_storage is not None and self.runtime.cache_fill == "batched" and self.config.train_a
        if backend == "c" and fast:
            from instantft.engine.fit import fit as c_fit

            if self.cache is None:
                self.cache = self.new_cache(len(data))
            result = c_fit(self.backbone, self.adapters, self.cache, self.cache_source(data), data, self.config,
                           on_step)  # fmt: skip
            result.trainable_params = self.trainable_parameters()
            return result
        return self.reference_fit(data, on_step)

    @torch.no_grad()
    def reference_fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        """The plain loop: one torch-op step per batch, the reference the fast engine matches."""
        result = FitResult(trainable_params=self.trainable_parameters())
        start = time.perf_counter()
        monitor = LossMonitor()
        if self.cache_storage is not None:
            if self.cache is None:
                self.cache = self.new_cache(len(data))
            self.cache.bind(self.cache_source(data))
            if self.runtime.cache_fill == "batched":
                self.fill_cache(data)
        for epoch, step, rows in schedule(len(data), self.config):
            images = data.images[rows]
            if self.cache is None:
                xs, base_logits = self.backbone.trace(images)
            else:
                if self.runtime.cache_fill == "lazy":
                    self.fill_cache(data, rows)
                *cached, base_logits = self.cache.split(self.cache.get(data.indices[rows]))
                xs = self.tap_inputs(images, cached)
            loss = self.adapters.sgd_step(xs, base_logits, data.labels[rows], self.config.lr)
            monitor.check(loss, epoch, step)
            result.add_step(epoch, loss)
            if on_step:
                on_step(epoch, step)
        monitor.check_tensors(self.trainable())
        result.end()
        result.seconds = time.perf_counter() - start
        result.cache_bytes = self.cache.nbytes if self.cache is not None else 0
        return result

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Base + adapters: in the C core when the engine is ``c`` and the backbone a chain (one
        call, the device program's predict), else the traced torch forward in batches."""
        fast = self._c_logits(images)
        if fast is not None:
            return fast
        out = []
        for i in range(0, len(images), batch_size):
            xs, base_logits = self.backbone.trace(images[i : i + batch_size])
            out.append(base_logits + self.adapters.delta(xs)[0])
        return torch.cat(out)

    def _c_logits(self, images: torch.Tensor) -> torch.Tensor | None:
        if resolve_engine(self.runtime.engine) != "c":
            return None
        from instantft.engine import cengine
        from instantft.engine.chain import cached_chain
        from instantft.engine.layout import Layout

        chain = cached_chain(self.backbone, self.backbone.fingerprint())
        if chain is None:
            return None
        layout = Layout.for_backbone(self.backbone, self.config.rank)
        packed = cengine.Adapters.pack(layout, self.adapters.A, self.adapters.B, self.config.scale)
        return torch.from_numpy(chain.predict(images.numpy(), packed, torch.get_num_threads()))

    @torch.no_grad()
    def gradients(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The hand-written gradients on one batch, by tensor name (for tests and analysis)."""
        xs, base_logits = self.backbone.trace(images)
        delta, hs = self.adapters.delta(xs)
        g, _ = SkipAdapters.output_grad(base_logits + delta, labels)
        dA, dB = self.adapters.grads(xs, hs, g)
        out: dict[str, torch.Tensor] = {}
        for k, (da, db) in enumerate(zip(dA, dB, strict=True), start=1):
            if self.adapters.train_a:
                out[f"skip{k}.A"] = da
            out[f"skip{k}.B"] = db
        return out


@register
class SkipLoRA(_SkipMethod):
    name = "skip-lora"
    description = "adapters from every tap to the logits; base forward every step"


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
