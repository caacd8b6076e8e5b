"""Fixed-point formats (Qm.n) and the datapath's configuration. Pure Python: the CLI imports it
without torch.

``Qm.n`` here means a signed two's-complement number of m + n bits, m of them integer bits
*including* the sign bit, n fractional bits: Vivado HLS's ``ap_fixed<m+n, m>``, APyTypes'
``APyFixed(int_bits=m, frac_bits=n)``. So the paper's Q8.16 activations are 24-bit words in
[-128, 128) with a step of 2^-16, and Q4.12 parameters and gradients are 16-bit words in [-8, 8)
with a step of 2^-12 (§4.1). Reading m as excluding the sign would give 25- and 17-bit words,
unlikely on an FPGA whose buffers are 16/24/32 bits wide.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from instantft.errors import InstantFTError
from instantft.settings import Settings, SettingsError

Rounding = Literal["round-half-up", "truncate"]
ROUNDINGS: tuple[Rounding, ...] = ("round-half-up", "truncate")

#: Widest word the integer emulation handles exactly (see :mod:`instantft.fixedpoint.ops`).
MAX_BITS = 48

_Q_PATTERN = re.compile(r"^[Qq](\d+)\.(\d+)$")


@dataclass(frozen=True)
class QFormat:
    """A signed fixed-point format: ``int_bits`` (with the sign) + ``frac_bits`` bits."""

    int_bits: int
    frac_bits: int

    def __post_init__(self) -> None:
        if self.int_bits < 1 or self.frac_bits < 0:
            raise InstantFTError(f"fixed-point format {self}: needs >= 1 integer bit (the sign) and >= 0 fraction bits")
        if self.bits > MAX_BITS:
            raise InstantFTError(f"fixed-point format {self} has {self.bits} bits; at most {MAX_BITS} are supported")

    @classmethod
    def parse(cls, text: str | QFormat) -> QFormat:
        """``"Q8.16"`` -> QFormat(8, 16)."""
        if isinstance(text, QFormat):
            return text
        m = _Q_PATTERN.match(text.strip())
        if not m:
            raise InstantFTError(f"fixed-point format {text!r} is not of the form Qm.n (e.g. Q8.16)")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def bits(self) -> int:
        return self.int_bits + self.frac_bits

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def one(self) -> int:
        """The integer that stands for 1.0 (may lie outside the range when int_bits = 1)."""
        return 1 << self.frac_bits

    @property
    def lsb(self) -> float:
        return 2.0**-self.frac_bits

    @property
    def max_value(self) -> float:
        return self.max_int * self.lsb

    def __str__(self) -> str:
        return f"Q{self.int_bits}.{self.frac_bits}"


ACT_FORMAT = QFormat(8, 16)
PARAM_FORMAT = QFormat(4, 12)


def _is_power_of_two(x: float) -> bool:
    return x > 0 and math.isfinite(x) and math.frexp(x)[0] == 0.5


def _qformat(text: str) -> str:
    return str(QFormat.parse(text))


def _power_of_two_table(n: int) -> int:
    if not (2 <= n <= 1 << 20 and n & (n - 1) == 0):
        raise ValueError(f"must be a power of two in 2..2^20, got {n}")
    return n


def _power_of_two(x: float) -> float:
    if not _is_power_of_two(x):
        raise ValueError(f"must be a power of two (e.g. 8), got {x}")
    return x


class FixedPointConfig(Settings):
    """The formats and table options of the integer datapath (``--numerics fixed``). Defaults:
    the paper's (§4.1) where it states them; the rest (tables, rounding) are the documented
    choices of :mod:`instantft.fixedpoint`."""

    act_format: Annotated[str, AfterValidator(_qformat)] = str(ACT_FORMAT)
    """Activations, Qm.n with m counting the sign: forward activations, cache values, logits, softmax."""
    param_format: Annotated[str, AfterValidator(_qformat)] = str(PARAM_FORMAT)
    """Parameters and gradients: frozen and adapter parameters, every gradient, the learning rate."""
    rounding: Rounding = "round-half-up"
    """Rounding of fixed-point products."""
    softmax_table_size: Annotated[int, AfterValidator(_power_of_two_table)] = 1024
    """Entries in each of the exp and reciprocal tables of the softmax, a power of two up to 2**20."""
    softmax_range: Annotated[float, AfterValidator(_power_of_two)] = 8.0
    """The exp table covers max(y) - y in [0, range): a power of two."""

    @property
    def act(self) -> QFormat:
        return QFormat.parse(self.act_format)

    @property
    def param(self) -> QFormat:
        return QFormat.parse(self.param_format)


NUMERICS = ("float", "fixed")


class Numerics(FixedPointConfig):
    """The arithmetic a run trains in: float, or the FPGA core's fixed point with these formats."""

    numerics: Literal["float", "fixed"] = "float"
    """float, or fixed: InstantFT in the FPGA core's integer arithmetic."""

    def fixed(self) -> FixedPointConfig | None:
        """The fixed-point config, or None for float numerics (which take no fixed-point option)."""
        options = self.model_dump(exclude_unset=True, exclude={"numerics"})
        if self.numerics == "float":
            if options:
                raise SettingsError("numerics", "float takes no fixed-point option (give --numerics fixed)")
            return None
        return FixedPointConfig(**options)


def describe(record: dict[str, Any]) -> str:
    """One line on a run's fixed-point numerics, for the terminal."""
    fx = record.get("fixed_point")
    if not fx:
        return f"numerics: {record.get('numerics', 'float')}"
    where = ", ".join(fx["saturating_tensors"]) or "none"
    return (
        f"numerics: fixed, activations {fx['act_format']}, parameters/gradients {fx['param_format']}, "
        f"{fx['rounding']}; saturated {fx['saturated']:,} values (in: {where}), underflowed {fx['underflow']:,}; "
        f"on-chip memory {fx['memory']['total_bits'] / 1e6:.2f} Mbit"
    )
