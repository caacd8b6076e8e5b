"""The FPGA datapath of InstantFT in software: a bit-accurate integer emulation (paper §4.1).

- :mod:`.formats`: Qm.n formats and :class:`FixedPointConfig` (torch-free, for the CLI);
- :mod:`.ops`: the primitives on int64 words (convert, multiply, MAC, shift/round, saturate) and
  the saturation/underflow :class:`~.ops.Counters`;
- :mod:`.softmax`: the lookup-table softmax; :mod:`.nf4_codec`: the cache Quant/Dequant;
- :mod:`.chain`: the frozen backbone's integer forward, for any chain the C core expresses (the
  method that trains in these numerics is :mod:`instantft.methods.fixed_point`);
- :mod:`.memory`: the on-chip memory estimate for the chosen formats.

Only the torch-free formats are imported here, so ``instantft --help`` stays fast.
"""

from instantft.fixedpoint.formats import (
    ACT_FORMAT,
    NUMERICS,
    PARAM_FORMAT,
    ROUNDINGS,
    FixedPointConfig,
    QFormat,
    Rounding,
    describe,
)

__all__ = [
    "ACT_FORMAT",
    "NUMERICS",
    "PARAM_FORMAT",
    "ROUNDINGS",
    "FixedPointConfig",
    "QFormat",
    "Rounding",
    "describe",
]
