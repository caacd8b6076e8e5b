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
from dataclasses import dataclass, field
from typing import Any, Literal

from instantft.errors import InstantFTError

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


@dataclass(frozen=True)
class FixedPointConfig:
    """The formats and table options of the integer datapath. Defaults: the paper's (§4.1) where
    it states them; the rest (tables, rounding) are the documented choices of
    :mod:`instantft.fixedpoint`."""

    act: QFormat = field(default=ACT_FORMAT)  # forward activations, cache values, logits, softmax
    param: QFormat = field(default=PARAM_FORMAT)  # frozen and adapter parameters, all gradients, lr
    rounding: Rounding = "round-half-up"
    softmax_table_size: int = 1024  # entries in each of the exp and reciprocal tables
    softmax_range: float = 8.0  # the exp table covers max(y) - y in [0, range)

    def __post_init__(self) -> None:
        object.__setattr__(self, "act", QFormat.parse(self.act))
        object.__setattr__(self, "param", QFormat.parse(self.param))
        if self.rounding not in ROUNDINGS:
            raise InstantFTError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        n = self.softmax_table_size
        if not (isinstance(n, int) and 2 <= n <= 1 << 20 and n & (n - 1) == 0):
            raise InstantFTError(f"--softmax-table-size must be a power of two in 2..2^20, got {n}")
        if not _is_power_of_two(self.softmax_range):
            raise InstantFTError(f"--softmax-range must be a power of two (e.g. 8), got {self.softmax_range}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "act_format": str(self.act),
            "param_format": str(self.param),
            "rounding": self.rounding,
            "softmax_table_size": self.softmax_table_size,
            "softmax_range": self.softmax_range,
        }


NUMERICS = ("float", "fixed")


def numerics_config(
    numerics: str = "float",
    act_format: str | None = None,
    param_format: str | None = None,
    rounding: str | None = None,
    softmax_table_size: int | None = None,
    softmax_range: float | None = None,
) -> FixedPointConfig | None:
    """The fixed-point config for CLI-style options (``None`` keeps a default), or ``None`` for
    float numerics, which take no fixed-point option."""
    given = {
        "act": act_format,
        "param": param_format,
        "rounding": rounding,
        "softmax_table_size": softmax_table_size,
        "softmax_range": softmax_range,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if numerics not in NUMERICS:
        raise InstantFTError(f"--numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
    if numerics == "float":
        if options:
            raise InstantFTError("--act-format, --param-format, --rounding and --softmax-* need --numerics fixed")
        return None
    return FixedPointConfig(**options)  # type: ignore[arg-type]


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
