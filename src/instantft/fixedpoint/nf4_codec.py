"""The Quant/Dequant modules (paper §4.1): NF4 (de)quantisation of cache rows held as words of the
activation format, in integer arithmetic.

Same codebook, block size and nearest-level rule as :mod:`instantft.nf4` (value v of a block with
absolute maximum a gets the index of the nearest level of v/a, a tie going to the lower level,
as ``torch.bucketize``). Choices the paper leaves open:

- the per-block scale a is the block's largest |word|, stored as a word of the activation format
  (the float cache stores fp32; the FPGA has no float); |min word| saturates to the max word,
  counted under ``nf4.absmax``;
- the 16 levels are constants with 16 fraction bits (:data:`LEVEL_FORMAT`, Q2.16: 1.0 must fit);
  the decision v/a > t_i is made exactly, as v·2^17 > (l_i + l_(i+1))·a, without a divider. For
  activation formats wider than 45 bits both v and a first drop their low bits so the products
  fit int64 (no effect at the default 24 bits);
- dequantisation is level × a, rounded once into the activation format.
"""

from __future__ import annotations

import torch

from instantft import nf4
from instantft.fixedpoint.formats import QFormat, Rounding
from instantft.fixedpoint.ops import Counters, mul, quantize, requantize

LEVEL_FORMAT = QFormat(2, 16)
LEVELS = quantize(nf4.NF4_LEVELS, LEVEL_FORMAT, "round-half-up")
#: l_i + l_(i+1): twice each decision threshold, with LEVEL_FORMAT's fraction bits
THRESHOLDS_X2 = LEVELS[1:] + LEVELS[:-1]
EXACT_COMPARE_BITS = 45


def encode(
    rows: torch.Tensor, fmt: QFormat, counters: Counters | None = None, block_size: int = nf4.BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Words (N, width) -> (packed codes (N, blocks·block_size/2) uint8, absmax words (N, blocks))."""
    n, width = rows.shape
    nb = nf4.blocks_for(width, block_size)
    padded = torch.zeros(n, nb * block_size, dtype=torch.int64)
    padded[:, :width] = rows
    blocks = padded.view(n, nb, block_size)
    absmax = requantize(blocks.abs().amax(-1), fmt.frac_bits, fmt, "truncate", counters, "nf4.absmax")
    drop = max(0, fmt.bits - EXACT_COMPARE_BITS)
    lhs = (blocks >> drop) << (LEVEL_FORMAT.frac_bits + 1)
    a = (absmax >> drop).unsqueeze(-1)
    codes = torch.zeros_like(blocks)
    for t in THRESHOLDS_X2.tolist():
        codes += lhs > t * a
    flat = codes.view(n, nb * block_size).to(torch.uint8)
    return (flat[:, 0::2] | (flat[:, 1::2] << 4)).contiguous(), absmax


def decode(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    width: int,
    fmt: QFormat,
    rounding: Rounding,
    counters: Counters | None = None,
    block_size: int = nf4.BLOCK_SIZE,
) -> torch.Tensor:
    """(packed codes, absmax words) -> words (N, width) of ``fmt``."""
    levels = LEVELS[nf4.unpack_codes(packed)].view(len(packed), -1, block_size)
    values = mul(levels, LEVEL_FORMAT, absmax.unsqueeze(-1), fmt, fmt, rounding, counters, "nf4.dequant")
    return values.reshape(len(packed), -1)[:, :width]


def entry_bits(width: int, fmt: QFormat, block_size: int = nf4.BLOCK_SIZE) -> int:
    """Bits of one cache row: 4-bit codes for the padded row + one absmax word per block."""
    nb = nf4.blocks_for(width, block_size)
    return nb * block_size * 4 + nb * fmt.bits
