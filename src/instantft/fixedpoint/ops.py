"""The integer primitives of the datapath, on int64 tensors holding fixed-point words.

A tensor of words carries no format; every function is told the formats. Products and sums are
kept exact (a full-width accumulator, as ``ap_fixed`` MACs with a wide accumulator type) and
rounded once, by :func:`requantize`, when the result is written to its format: shift to the
format's fractional bits with the rounding mode, then saturate, then count. That is the only
place values lose precision, so every loss is counted there (:class:`Counters`).

Rounding modes (those of ``ap_fixed`` and APyTypes):

- ``truncate``: toward -inf (``AP_TRN``, APyTypes ``TRN``), i.e. an arithmetic right shift;
- ``round-half-up``: to nearest, ties toward +inf (``AP_RND``, APyTypes ``RND``).

Overflow always saturates (``AP_SAT``): a wrapped activation is a silent error in a golden model.

Exactness. A product of two 24-bit words summed over 784 terms needs ~58 bits and fits int64;
Q16.32 x Q16.32 needs ~106. When the worst case for the actual operands could exceed int64,
:func:`exact_product` splits each operand into 16-bit digits, forms the digit products (each
sum < 2^32·K·4, so any K < 2^28 terms is safe) and returns a :class:`WideInt`. Formats are limited
to 48 bits (:data:`~instantft.fixedpoint.formats.MAX_BITS`) so that any value the emulation clamps
to ±2^62 internally is also far outside every format and saturates identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from instantft.errors import InstantFTError
from instantft.fixedpoint.formats import QFormat, Rounding

LIMB = 16  # bits per digit of a WideInt
LIMIT = 1 << 62  # int64 results are clamped to ±LIMIT; every format saturates well inside it


# --- counters -----------------------------------------------------------------------------------
@dataclass
class TensorCount:
    """Words written to one named tensor, and how many saturated or underflowed."""

    values: int = 0
    saturated: int = 0  # clamped to the format's range
    underflow: int = 0  # a nonzero exact value that rounded to 0


class Counters:
    """Saturation and underflow counts per tensor name, accumulated over a run."""

    def __init__(self) -> None:
        self.tensors: dict[str, TensorCount] = {}

    def record(self, name: str, values: int, saturated: int, underflow: int) -> None:
        c = self.tensors.setdefault(name, TensorCount())
        c.values += values
        c.saturated += saturated
        c.underflow += underflow

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: vars(v).copy() for k, v in self.tensors.items()}

    def total(self, what: str) -> int:
        return sum(getattr(c, what) for c in self.tensors.values())

    def saturating(self) -> list[str]:
        return [k for k, c in self.tensors.items() if c.saturated]


def _record(
    counters: Counters | None, name: str | None, n: int, saturated: torch.Tensor, underflow: torch.Tensor
) -> None:
    if counters is not None:
        counters.record(name or "unnamed", n, int(saturated.sum()), int(underflow.sum()))


# --- shifts, saturation, conversion ---------------------------------------------------------------
def floor_shift(v: torch.Tensor, shift: int) -> torch.Tensor:
    """floor(v / 2^shift) for shift >= 0: an arithmetic right shift (exact for any shift)."""
    return v >> min(shift, 63)


def round_shift(v: torch.Tensor, shift: int, rounding: Rounding) -> torch.Tensor:
    """v / 2^shift in the rounding mode (shift > 0), or v · 2^-shift (shift <= 0, exact; results
    beyond ±2^62 are clamped there, which every format saturates anyway).

    round-half-up uses floor((v + 2^(s-1)) / 2^s) = (floor(v / 2^(s-1)) + 1) >> 1, which cannot
    overflow."""
    if shift <= 0:
        k = min(-shift, 62)
        return v.clamp(-(LIMIT >> k), LIMIT >> k) << k
    if rounding == "truncate":
        return floor_shift(v, shift)
    return (floor_shift(v, shift - 1).clamp(-LIMIT, LIMIT) + 1) >> 1


def saturate(v: torch.Tensor, fmt: QFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """(v clamped to the format's range, mask of the values that were out of range)."""
    out_of_range = (v > fmt.max_int) | (v < fmt.min_int)
    return v.clamp(fmt.min_int, fmt.max_int), out_of_range


class WideInt:
    """An exact integer tensor too wide for int64: Σ digits[i]·2^(16·i), every digit in [0, 2^16)
    except the last, which is signed. Only ever consumed by :func:`requantize`."""

    def __init__(self, digits: list[torch.Tensor]) -> None:
        mask = (1 << LIMB) - 1
        digits = list(digits)
        for i in range(len(digits) - 1):  # carry-normalise
            carry = digits[i] >> LIMB
            digits[i] = digits[i] & mask
            digits[i + 1] = digits[i + 1] + carry
        self.digits = digits

    def nonzero(self) -> torch.Tensor:
        out = self.digits[0] != 0
        for d in self.digits[1:]:
            out |= d != 0
        return out

    def floor_shift(self, shift: int) -> torch.Tensor:
        """floor(value / 2^shift) as int64, exact when within ±2^62, else ±2^62 (shift >= 0).

        Composes digits from the top; an accumulator beyond C = 2^47 - 1 is clamped and flagged:
        the true result is then >= 2^48 in magnitude, outside every format."""
        top = len(self.digits) - 1
        d, r = divmod(shift, LIMB)
        if d >= top:
            return floor_shift(self.digits[top], shift - top * LIMB).clamp(-LIMIT, LIMIT)
        bound = (1 << (63 - LIMB)) - 1
        acc = self.digits[top]
        flagged = torch.zeros_like(acc, dtype=torch.bool)
        for k in range(top - 1, d - 1, -1):
            flagged |= acc.abs() > bound
            acc = acc.clamp(-bound, bound)
            acc = acc * (1 << LIMB) + self.digits[k] if k > d else acc * (1 << (LIMB - r)) + (self.digits[k] >> r)
        return torch.where(flagged, acc.sign() * LIMIT, acc.clamp(-LIMIT, LIMIT))

    def round_shift(self, shift: int, rounding: Rounding) -> torch.Tensor:
        if shift <= 0:
            return round_shift(self.floor_shift(0), shift, rounding)
        if rounding == "truncate":
            return self.floor_shift(shift)
        return (self.floor_shift(shift - 1) + 1) >> 1


def requantize(
    v: torch.Tensor | WideInt,
    frac_bits: int,
    fmt: QFormat,
    rounding: Rounding,
    counters: Counters | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """Write exact values with ``frac_bits`` fractional bits to ``fmt``: round, saturate, count."""
    shift = frac_bits - fmt.frac_bits
    if isinstance(v, WideInt):
        nonzero, shifted = v.nonzero(), v.round_shift(shift, rounding)
    else:
        nonzero, shifted = v != 0, round_shift(v, shift, rounding)
    out, sat = saturate(shifted, fmt)
    _record(counters, name, out.numel(), sat, nonzero & (out == 0))
    return out


def quantize(
    x: torch.Tensor, fmt: QFormat, rounding: Rounding, counters: Counters | None = None, name: str | None = None
) -> torch.Tensor:
    """Float tensor -> words of ``fmt`` (exact in float64: scaling by 2^n is exact, and so is the
    fraction v - floor(v) that decides round-half-up)."""
    v = x.detach().to(torch.float64)
    if bool(torch.isnan(v).any()):
        raise InstantFTError(f"cannot convert NaN to fixed point ({name or 'tensor'})")
    v = v * 2.0**fmt.frac_bits
    f = torch.floor(v)
    if rounding == "round-half-up":
        f = f + (v - f >= 0.5).to(torch.float64)
    sat = (f > fmt.max_int) | (f < fmt.min_int)
    out = f.clamp(fmt.min_int, fmt.max_int).to(torch.int64)
    _record(counters, name, out.numel(), sat, (x != 0) & (out == 0))
    return out


def to_float(q: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """Words -> float64 values (exact for formats up to 53 bits); for reporting only."""
    return q.to(torch.float64) * 2.0**-fmt.frac_bits


# --- arithmetic -----------------------------------------------------------------------------------
def _bits(t: torch.Tensor) -> int:
    """Signed width of the widest value in ``t``."""
    if not t.numel():
        return 1
    lo, hi = torch.aminmax(t)
    return max(int(hi), -int(lo)).bit_length() + 1


def _digits(t: torch.Tensor, bits: int) -> list[torch.Tensor]:
    n = -(-bits // LIMB)
    mask = (1 << LIMB) - 1
    return [(t >> (LIMB * i)) & mask for i in range(n - 1)] + [t >> (LIMB * (n - 1))]


def exact_product(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor, terms: int
) -> torch.Tensor | WideInt:
    """``op(a, b)`` (``torch.mul`` or ``torch.matmul``, summing ``terms`` products) computed exactly:
    one int64 op when the worst case for these operands stays below 2^61, else digit by digit."""
    ba, bb = _bits(a), _bits(b)
    if ba + bb - 2 + max(terms - 1, 0).bit_length() <= 61:
        return op(a, b)
    if terms >= 1 << 28:
        raise InstantFTError(f"exact accumulation over {terms} terms is not supported")
    da, db = _digits(a, ba), _digits(b, bb)
    out: list[torch.Tensor | None] = [None] * (len(da) + len(db) - 1)
    for i, x in enumerate(da):
        for j, y in enumerate(db):
            p = op(x, y)
            acc = out[i + j]
            out[i + j] = p if acc is None else acc + p
    return WideInt([t for t in out if t is not None])


def mul(
    a: torch.Tensor,
    fa: QFormat,
    b: torch.Tensor,
    fb: QFormat,
    out: QFormat,
    rounding: Rounding,
    counters: Counters | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """Elementwise a·b (broadcasting), rounded once into ``out``."""
    return requantize(exact_product(torch.mul, a, b, 1), fa.frac_bits + fb.frac_bits, out, rounding, counters, name)


@dataclass(frozen=True)
class Into:
    """Where a MAC's exact result goes: its format and rounding, and the counters that tally it
    under ``name``."""

    fmt: QFormat
    rounding: Rounding
    counters: Counters | None = None
    name: str | None = None


def matmul(a: torch.Tensor, fa: QFormat, b: torch.Tensor, fb: QFormat, into: Into, bias: torch.Tensor | None = None
           ) -> torch.Tensor:  # fmt: skip
    """a @ b (+ bias, in b's format) with an exact accumulator, rounded once ``into`` its format (the MAC).

    The bias enters the accumulator as one more product, 2^fa × bias, so it is added
    exactly at the products' precision, as an HLS accumulator initialised with the bias is."""
    out, rounding, counters, name = into.fmt, into.rounding, into.counters, into.name
    frac = fa.frac_bits + fb.frac_bits
    if bias is None:
        return requantize(exact_product(torch.matmul, a, b, a.shape[-1]), frac, out, rounding, counters, name)
    shift = fa.frac_bits  # the bias has b's fraction bits
    k = a.shape[-1] + 1
    if max(_bits(a) + _bits(b) - 2, _bits(bias) - 1 + shift) + k.bit_length() <= 61:  # all fits int64
        acc: torch.Tensor | WideInt = torch.matmul(a, b) + (bias << shift)
    else:
        a = torch.cat([a, torch.full((*a.shape[:-1], 1), 1 << shift, dtype=a.dtype)], dim=-1)
        b = torch.cat([b, bias.reshape(1, -1).to(b.dtype)], dim=0)
        acc = exact_product(torch.matmul, a, b, k)
    return requantize(acc, frac, out, rounding, counters, name)


def add(
    a: torch.Tensor, b: torch.Tensor, fmt: QFormat, counters: Counters | None = None, name: str | None = None
) -> torch.Tensor:
    """a + b in one format, saturating (exact otherwise)."""
    return requantize(a + b, fmt.frac_bits, fmt, "truncate", counters, name)


def divide(
    a: torch.Tensor,
    fa: QFormat,
    divisor: int,
    out: QFormat,
    rounding: Rounding,
    counters: Counters | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """a / divisor (a positive integer constant, e.g. the batch size) rounded into ``out``."""
    if divisor < 1:
        raise InstantFTError(f"divisor must be a positive integer, got {divisor}")
    shift = fa.frac_bits - out.frac_bits
    num, den = (a, divisor << shift) if shift >= 0 else (a << -shift, divisor)
    if rounding == "truncate":
        q = torch.div(num, den, rounding_mode="floor")
    else:
        q = torch.div(2 * num + den, 2 * den, rounding_mode="floor")
    res, sat = saturate(q, out)
    _record(counters, name, res.numel(), sat, (a != 0) & (res == 0))
    return res


def relu(q: torch.Tensor) -> torch.Tensor:
    return q.clamp_min(0)
