"""InstantFT in the FPGA core's integer arithmetic (paper §4.1): the golden model of the datapath,
built from the integer primitives of :mod:`instantft.fixedpoint`.

Per mini-batch, in the core's order (all words; formats from :class:`FixedPointConfig`):

1. first sight of a sample: integer base forward (:class:`~instantft.fixedpoint.chain.FixedChain`),
   Quant -> NF4 cache row [x1 | x2 | x3 | x4 | f(x)] (LeNet-5's taps); later: Dequant of the cached
   row (:mod:`.nf4_codec`);
2. adapter forward, the five modules side by side: h_k = A_k x_k, delta_k = B_k h_k (each rounded
   into the activation format), y = f(x) + Σ delta_k (saturating adds);
3. CELoss: p = table softmax(y) (:mod:`.softmax`), g = (p - onehot) / batch in the gradient
   (= parameter) format;
4. BPLConv/BPLFC, side by side from the same g and the pre-update B: dB_k = gᵀ h_k,
   g·B_k, dA_k = (g·B_k)ᵀ x_k, then A_k -= lr·dA_k, B_k -= lr·dB_k (lr a parameter-format constant).

Batch order and adapter init are the float method's (:func:`schedule`, :class:`SkipAdapters`, the
init rounded into the parameter format), so a wide format tracks float InstantFT step by step.
Evaluation runs the integer forward without the cache, as the float method does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from instantft.adapters import SkipAdapters
from instantft.backbones import Backbone, TapSpec
from instantft.data import ImageSet
from instantft.errors import InstantFTError
from instantft.fixedpoint.chain import FixedChain, Op
from instantft.fixedpoint.formats import FixedPointConfig
from instantft.fixedpoint.memory import memory_estimate
from instantft.fixedpoint.nf4_codec import decode, encode, entry_bits
from instantft.fixedpoint.ops import Counters, Into, add, divide, matmul, mul, quantize, to_float
from instantft.fixedpoint.softmax import SoftmaxTables, build_tables, softmax
from instantft.methods.base import FineTuneConfig, FitResult, LossMonitor, Method, register_variant, schedule
from instantft.settings import Runtime

CHUNK = 256  # samples per integer forward (bounds the im2col buffer)


class FixedSkipAdapters:
    """The five skip adapters as parameter-format words: forward, output gradient, gradients, SGD."""

    def __init__(self, init: SkipAdapters, config: FixedPointConfig, lr: float, counters: Counters) -> None:
        self.config = config
        p, rnd = config.param, config.rounding
        self.A = [quantize(a, p, rnd, counters, f"param.skip{k}.A") for k, a in enumerate(init.A, 1)]
        self.B = [quantize(b, p, rnd, counters, f"param.skip{k}.B") for k, b in enumerate(init.B, 1)]
        self.lr = quantize(torch.tensor(lr), p, rnd, counters, "param.lr")
        if int(self.lr) == 0:
            raise InstantFTError(f"--lr {lr} rounds to 0 in the parameter format {p}")
        self.scale = None if init.scale == 1.0 else quantize(torch.tensor(init.scale), p, rnd, counters, "param.scale")

    def delta(self, xs: list[torch.Tensor], counters: Counters | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Σ_k B_k A_k x_k (scaled) and the projections h_k, as activation words."""
        c = self.config
        hs, total = [], None
        for k, (x, a, b) in enumerate(zip(xs, self.A, self.B, strict=True), 1):
            h = matmul(x, c.act, a.t(), c.param, Into(c.act, c.rounding, counters, f"skip{k}.h"))
            d = matmul(h, c.act, b.t(), c.param, Into(c.act, c.rounding, counters, f"skip{k}.delta"))
            total = d if total is None else add(total, d, c.act, counters, "delta.sum")
            hs.append(h)
        assert total is not None
        if self.scale is not None:
            total = mul(total, c.act, self.scale, c.param, c.act, c.rounding, counters, "delta.scaled")
        return total, hs

    def output_grad(
        self, y: torch.Tensor, labels: torch.Tensor, tables: SoftmaxTables, counters: Counters
    ) -> torch.Tensor:
        """g = (table softmax(y) - onehot) / batch, parameter-format words (the CELoss module)."""
        c = self.config
        p = softmax(y, tables, c.rounding, counters)
        p[torch.arange(len(labels)), labels] -= c.act.one
        g = divide(p, c.act, len(labels), c.param, c.rounding, counters, "grad.output")
        if self.scale is not None:
            g = mul(g, c.param, self.scale, c.param, c.param, c.rounding, counters, "grad.output_scaled")
        return g

    def sgd_step(
        self,
        xs: list[torch.Tensor],
        base_logits: torch.Tensor,
        labels: torch.Tensor,
        tables: SoftmaxTables,
        counters: Counters,
    ) -> float:
        """One step on a batch of activation words; returns the (float, reported) loss before it."""
        c = self.config
        act, par, rnd = c.act, c.param, c.rounding
        delta, hs = self.delta(xs, counters)
        y = add(base_logits, delta, act, counters, "logits")
        loss = float(F.cross_entropy(to_float(y, act), labels))
        g = self.output_grad(y, labels, tables, counters)
        gt = g.t().contiguous()
        dB = [matmul(gt, par, h, act, Into(par, rnd, counters, f"skip{k}.dB")) for k, h in enumerate(hs, 1)]
        gB = [matmul(g, par, b, par, Into(par, rnd, counters, f"skip{k}.gB")) for k, b in enumerate(self.B, 1)]
        dA = [
            matmul(v.t().contiguous(), par, x, act, Into(par, rnd, counters, f"skip{k}.dA"))
            for k, (v, x) in enumerate(zip(gB, xs, strict=True), 1)
        ]
        for k in range(len(self.A)):
            step_a = mul(self.lr, par, dA[k], par, par, rnd, counters, f"skip{k + 1}.lr_dA")
            step_b = mul(self.lr, par, dB[k], par, par, rnd, counters, f"skip{k + 1}.lr_dB")
            self.A[k] = add(self.A[k], -step_a, par, counters, f"skip{k + 1}.A")
            self.B[k] = add(self.B[k], -step_b, par, counters, f"skip{k + 1}.B")
        return loss


@register_variant("fixed")
class FixedPointInstantFT(Method):
    """InstantFT with ``--numerics fixed``: the integer datapath of the FPGA core, on any backbone
    the core's op chain expresses."""

    name = "instantft"
    description = "InstantFT in the FPGA core's fixed-point arithmetic (integer emulation)"

    def __init__(
        self,
        base: Backbone | nn.Module,
        config: FineTuneConfig,
        taps: TapSpec = "auto",
        example: Any = None,
        runtime: Runtime | None = None,
        fixed: FixedPointConfig | None = None,
    ) -> None:
        self.fixed = fixed or FixedPointConfig()  # the variant's own setting, before setup() reads it
        super().__init__(base, config, taps, example, runtime)

    def setup(self) -> None:
        config = self.config
        if not config.train_a:
            raise InstantFTError("--numerics fixed trains A and B as the FPGA core does; --no-train-a is float only")
        self.counters = Counters()  # setup, cache fill and every training step
        self.eval_counters = Counters()  # every evaluation forward
        self.net = FixedChain(fixed_ops(self.backbone), self.fixed, self.counters)
        sizes, classes = self.backbone.sizes, self.backbone.num_classes
        gen = torch.Generator().manual_seed(config.adapter_seed)
        init = SkipAdapters(sizes, classes, config, gen)
        self.adapters = FixedSkipAdapters(init, self.fixed, config.lr, self.counters)
        self.tables = build_tables(self.fixed, classes, self.counters)
        self.cache_width = sum(self.backbone.cache_sizes)

    # --- Method interface -----------------------------------------------------------------------
    def trainable(self) -> dict[str, torch.Tensor]:
        """The adapters as float32 values (exact: they are words of a <= 48-bit format)."""
        out: dict[str, torch.Tensor] = {}
        for k, (a, b) in enumerate(zip(self.adapters.A, self.adapters.B, strict=True), start=1):
            out[f"skip{k}.A"] = to_float(a, self.fixed.param).float()
            out[f"skip{k}.B"] = to_float(b, self.fixed.param).float()
        return out

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        super().load_trainable(state)  # checks names and shapes
        p, rnd = self.fixed.param, self.fixed.rounding
        for k in range(len(self.adapters.A)):
            self.adapters.A[k] = quantize(state[f"skip{k + 1}.A"], p, rnd, self.counters, f"param.skip{k + 1}.A")
            self.adapters.B[k] = quantize(state[f"skip{k + 1}.B"], p, rnd, self.counters, f"param.skip{k + 1}.B")

    def to_words(self, images: torch.Tensor, counters: Counters) -> torch.Tensor:
        """Images -> activation words (the one float input of the datapath)."""
        return quantize(images, self.fixed.act, self.fixed.rounding, counters, "input")

    @torch.no_grad()
    def fit(self, data: ImageSet, on_step: Callable[[int, int], None] | None = None) -> FitResult:
        result = FitResult()
        start = time.perf_counter()
        act, rnd = self.fixed.act, self.fixed.rounding
        x0 = self.to_words(data.images, self.counters)
        # Quant: every sample's base forward once (the cache is full after the first epoch either way)
        parts = [self._encode(x0[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
        codes = torch.cat([p[0] for p in parts])
        absmax = torch.cat([p[1] for p in parts])
        sizes = self.backbone.cache_sizes
        monitor = LossMonitor()  # saturating arithmetic keeps the loss finite; the bound still applies
        for epoch, step, rows in schedule(len(data), self.config):
            cached = decode(codes[rows], absmax[rows], self.cache_width, act, rnd, self.counters)
            *xs, base_logits = torch.split(cached, sizes, dim=1)
            if self.backbone.taps[0].is_model_input:  # read from the data, not cached
                xs = [x0[rows].flatten(1), *xs]
            loss = self.adapters.sgd_step(xs, base_logits, data.labels[rows], self.tables, self.counters)
            monitor.check(loss, epoch, step)
            result.add_step(epoch, loss)
            if on_step:
                on_step(epoch, step)
        result.end()
        result.seconds = time.perf_counter() - start
        result.cache_bytes = len(data) * entry_bits(self.cache_width, act) // 8
        return result

    def _encode(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, logits = self.net.trace(x0, self.counters)
        cached = xs[1:] if self.backbone.taps[0].is_model_input else xs
        return encode(torch.cat([x.flatten(1) for x in cached] + [logits], dim=1), self.fixed.act, self.counters)

    @torch.no_grad()
    def logit_words(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the fine-tuned model as activation words (integer forward, no cache)."""
        out = []
        for i in range(0, len(images), CHUNK):
            xs, base = self.net.trace(self.to_words(images[i : i + CHUNK], self.eval_counters), self.eval_counters)
            delta, _ = self.adapters.delta([x.flatten(1) for x in xs], self.eval_counters)
            out.append(add(base, delta, self.fixed.act, self.eval_counters, "logits"))
        return torch.cat(out) if out else torch.zeros(0, self.backbone.num_classes, dtype=torch.int64)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(self.logit_words(images), self.fixed.act).float()

    # --- reporting ------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """What the JSON record says about the numerics: formats, counters, memory estimate."""
        return {
            **self.fixed.to_dict(),
            "saturated": self.counters.total("saturated"),
            "underflow": self.counters.total("underflow"),
            "saturating_tensors": self.counters.saturating(),
            "counters": self.counters.to_dict(),
            "eval_counters": self.eval_counters.to_dict(),
            "memory": memory_estimate(self.fixed, self.backbone, self.config.rank, self.config.batch_size),
        }


def fixed_ops(backbone: Backbone) -> list[Op]:
    """The backbone as the core's op chain, for the integer datapath; one line if it is not one."""
    from instantft.engine.cengine import TAP_NONE
    from instantft.engine.chain import chain_entries

    named = chain_entries(backbone)
    if named is None:
        raise InstantFTError(
            f"--numerics fixed runs the FPGA core's datapath, a chain of conv, ReLU, max-pool, flatten and linear "
            f"layers (BatchNorm folded) with every tap on a layer's input; {type(backbone.model).__name__} with "
            f"taps {', '.join(t.label for t in backbone.taps)} is not one"
        )

    def tensor(a: Any) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(a)

    return [Op(name, op.kind, op.kernel, op.stride, op.padding, op.tap != TAP_NONE, tensor(op.weight), tensor(op.bias))
            for name, op in named]  # fmt: skip
