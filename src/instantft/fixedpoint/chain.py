"""A frozen chain backbone (the ops the C core runs: conv, ReLU, max-pool, flatten, linear, with
BatchNorm folded into the conv before it) in integer arithmetic: the Conv-MP and FC modules of the
paper's core (§4.1), for any network the chain expresses, LeNet-5 among them.

Weights and biases are words of the parameter format, activations words of the activation format.
Each conv output pixel / linear output is one MAC with an exact accumulator seeded by the bias,
rounded once into the activation format (what Conv writes to its line buffer); ReLU and max-pool
then act on words, exactly (both commute with a monotone rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from instantft.errors import InstantFTError
from instantft.fixedpoint.formats import FixedPointConfig
from instantft.fixedpoint.ops import Counters, Into, matmul, quantize, relu

#: op kinds, as the C core numbers them (csrc/instantft.h)
CONV2D, RELU, MAXPOOL, FLATTEN, LINEAR = 1, 2, 3, 4, 5
#: where a tap sits: the input of an op (the model's own input, or a cached activation)
TAP_NONE = 0


@dataclass(frozen=True)
class Op:
    """One op of the chain: its kind, geometry, float parameters, the module it came from and
    whether its input is a tap."""

    name: str
    kind: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    tap: bool = False
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class FixedChain:
    """A chain's parameters as words, and its integer forward pass."""

    def __init__(self, ops: list[Op], config: FixedPointConfig, counters: Counters | None = None) -> None:
        self.ops, self.config = ops, config
        self.weights: dict[int, torch.Tensor] = {}
        self.biases: dict[int, torch.Tensor] = {}
        for i, op in enumerate(ops):
            if op.kind in (CONV2D, LINEAR):
                if op.weight is None:
                    raise InstantFTError(f"fixed-point chain: op {self._label(i)} has no weight")
                w = op.weight if op.kind == LINEAR else op.weight.reshape(len(op.weight), -1)
                b = op.bias if op.bias is not None else torch.zeros(len(w))
                self.weights[i] = quantize(w, config.param, config.rounding, counters, f"param.{self._label(i)}.weight")
                self.biases[i] = quantize(b, config.param, config.rounding, counters, f"param.{self._label(i)}.bias")

    def _label(self, i: int) -> str:
        return self.ops[i].name or f"op{i}"

    def _mac(self, x: torch.Tensor, i: int, counters: Counters | None) -> torch.Tensor:
        c = self.config
        into = Into(c.act, c.rounding, counters, f"{self._label(i)}.out")
        return matmul(x, c.act, self.weights[i].t(), c.param, into, self.biases[i])

    def _conv(self, x: torch.Tensor, i: int, counters: Counters | None) -> torch.Tensor:
        """2-D convolution as im2col + MAC, output words (N, C_out, H', W')."""
        op = self.ops[i]
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        cols = x.unfold(2, kh, sh).unfold(3, kw, sw)  # N, C, H', W', kh, kw
        n, _, ho, wo = cols.shape[:4]
        cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
        return self._mac(cols, i, counters).view(n, ho, wo, -1).permute(0, 3, 1, 2)

    @staticmethod
    def _pool(x: torch.Tensor, op: Op) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=torch.iinfo(x.dtype).min)
        return x.unfold(2, kh, sh).unfold(3, kw, sw).amax(dim=(-1, -2))

    def trace(self, x0: torch.Tensor, counters: Counters | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The tap inputs (as shaped where they are read) and the base logits, as words."""
        taps: list[torch.Tensor] = []
        x = x0
        for i, op in enumerate(self.ops):
            if op.tap:
                taps.append(x)
            if op.kind == CONV2D:
                x = self._conv(x, i, counters)
            elif op.kind == LINEAR:
                x = self._mac(x, i, counters)
            elif op.kind == RELU:
                x = relu(x)
            elif op.kind == MAXPOOL:
                x = self._pool(x, op)
            elif op.kind == FLATTEN:
                x = x.flatten(1)
            else:
                raise InstantFTError(f"fixed-point chain: op {self._label(i)} has unknown kind {op.kind}")
        return taps, x
