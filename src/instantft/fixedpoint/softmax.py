"""Softmax through two lookup tables instead of exponentials and a divider (paper §4.1, which
cites hls4ml [12] for the tables). The paper gives no table parameters; the choices here follow
hls4ml's "stable" softmax and are options where it matters:

1. d = max(y) - y >= 0, exact (so the table only needs the non-positive half of exp);
2. exp table: ``size`` entries over d in [0, ``range``), bin width w = range/size; the index is a
   bit slice of d (both powers of two, so no multiplier), d >= range clamps to the last bin
   (counted as saturation of ``softmax.exp_index``); entry i = exp(-(i + 1/2)·w), the bin centre
   (hls4ml's choice: a bit slice rounds toward 0, the centre halves the worst error);
3. s = Σ exp, exact;
4. reciprocal table: ``size`` entries over s in [0, S), S = the power of two >= the number of
   classes (s <= classes because every entry is <= 1), entry j = 1/((j + 1/2)·S/size). Sums
   below the exp table's first entry (the max class alone) cannot occur; those bins hold the
   reciprocal of the first reachable bin instead of values that would saturate;
5. p = exp · reciprocal, rounded once.

All table entries, the sum and the probabilities are words of the activation format; tables are
computed offline in float64 and rounded with the datapath's rounding mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from instantft.fixedpoint.formats import FixedPointConfig, QFormat, Rounding
from instantft.fixedpoint.ops import Counters, add, mul, quantize


@dataclass(frozen=True)
class SoftmaxTables:
    """The two ROMs and the bit slices that index them."""

    exp: torch.Tensor  # (size,) words: exp(-(i + 1/2)·range/size)
    reciprocal: torch.Tensor  # (size,) words: 1/((j + 1/2)·sum_range/size)
    fmt: QFormat
    size: int
    range: float
    sum_range: int
    exp_shift: int  # exp index = d >> exp_shift (a left shift when negative)
    reciprocal_shift: int

    @property
    def entry_bits(self) -> int:
        return self.fmt.bits


def _log2(x: float) -> int:
    return math.frexp(x)[1] - 1


def index_shift(fmt: QFormat, span: float, size: int) -> int:
    """Right shift turning a word of ``fmt`` into a bin index of a ``size``-entry table over [0, span)."""
    return fmt.frac_bits + _log2(span) - _log2(size)


def table_index(v: torch.Tensor, shift: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin index of non-negative words ``v``, mask of the values beyond the table, clamped to the last bin)."""
    bound = size << shift if shift >= 0 else -((-size) >> -shift)  # first word past the table
    beyond = v >= bound
    v = v.clamp(0, bound - 1)
    idx = v >> shift if shift >= 0 else v << -shift
    return idx.clamp_max(size - 1), beyond


def build_tables(config: FixedPointConfig, num_classes: int, counters: Counters | None = None) -> SoftmaxTables:
    """The exp and reciprocal tables for ``config`` (entry rounding counted under softmax.*_table)."""
    fmt, size, rng, rnd = config.act, config.softmax_table_size, config.softmax_range, config.rounding
    sum_range = 1 << max(num_classes - 1, 1).bit_length()
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    exps = torch.tensor([math.exp(-(i + 0.5) * (rng / size)) for i in range(size)], dtype=torch.float64)
    exp = quantize(exps, fmt, rnd, counters, "softmax.exp_table")
    rshift = index_shift(fmt, sum_range, size)
    first, _ = table_index(exp[:1], rshift, size)  # the smallest reachable sum: the max class alone
    widths = centres.clamp_min(float(first) + 0.5) * (sum_range / size)
    reciprocal = quantize(1.0 / widths, fmt, rnd, counters, "softmax.reciprocal_table")
    return SoftmaxTables(exp, reciprocal, fmt, size, rng, sum_range, index_shift(fmt, rng, size), rshift)


def softmax(
    y: torch.Tensor, tables: SoftmaxTables, rounding: Rounding, counters: Counters | None = None
) -> torch.Tensor:
    """Row-wise softmax of logits ``y`` (B, C), words of ``tables.fmt`` in and out."""
    fmt = tables.fmt
    d = y.max(dim=1, keepdim=True).values - y
    i, beyond = table_index(d, tables.exp_shift, tables.size)
    if counters is not None:
        counters.record("softmax.exp_index", d.numel(), int(beyond.sum()), 0)
    e = tables.exp[i]
    s = add(e.sum(dim=1, keepdim=True), torch.zeros((), dtype=torch.int64), fmt, counters, "softmax.sum")
    j, beyond = table_index(s, tables.reciprocal_shift, tables.size)
    if counters is not None:
        counters.record("softmax.reciprocal_index", s.numel(), int(beyond.sum()), 0)
    return mul(e, fmt, tables.reciprocal[j], fmt, fmt, rounding, counters, "softmax.prob")
