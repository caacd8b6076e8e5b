"""4-bit NormalFloat (NF4), the QLoRA codebook (Dettmers et al., 2023), with blockwise absmax
scaling: what shrinks the Forward Cache ~7× (paper §3.2).

A tensor is flattened, padded with zeros to a multiple of ``block_size`` (64), each block is
divided by its absolute maximum, and each value is replaced by the index of the nearest of the
16 NF4 levels. Two 4-bit codes are packed per byte (first value in the low nibble). The stored
size of n values is ``ceil(n/64)·32`` code bytes + ``ceil(n/64)·4`` bytes of fp32 absmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The 16 NF4 levels, as in bitsandbytes (``create_normal_map``) and the QLoRA paper.
NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)
#: Decision boundaries: midpoints between neighbouring levels (nearest-level rounding).
NF4_THRESHOLDS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
BLOCK_SIZE = 64


@dataclass(frozen=True)
class NF4Tensor:
    """Packed codes (..., blocks·block_size/2) uint8 and absmax (..., blocks) float32 for rows of
    ``numel`` values each (the leading dims are kept, so a batch of cache rows stays addressable)."""

    codes: torch.Tensor
    absmax: torch.Tensor
    numel: int
    block_size: int = BLOCK_SIZE

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.absmax.numel() * self.absmax.element_size()


def blocks_for(numel: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-numel // block_size)


def nbytes_per_row(numel: int, block_size: int = BLOCK_SIZE) -> int:
    """Stored bytes for one row of ``numel`` values: packed codes + fp32 absmax per block."""
    b = blocks_for(numel, block_size)
    return b * block_size // 2 + 4 * b


def quantize(x: torch.Tensor, block_size: int = BLOCK_SIZE) -> NF4Tensor:
    """Quantise each row of ``x`` (shape (..., n)) to NF4 with absmax blocks of ``block_size``."""
    if block_size % 2:
        raise ValueError("block_size must be even (two codes per byte)")
    lead, n = x.shape[:-1], x.shape[-1]
    nb = blocks_for(n, block_size)
    padded = torch.zeros(*lead, nb * block_size, dtype=torch.float32)
    padded[..., :n] = x
    blocks = padded.view(*lead, nb, block_size)
    absmax = blocks.abs().amax(-1)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = (blocks / scale.unsqueeze(-1)).reshape(*lead, nb * block_size)
    codes = torch.bucketize(normed, NF4_THRESHOLDS).to(torch.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return NF4Tensor(packed.contiguous(), absmax.contiguous(), n, block_size)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """(..., m) packed bytes -> (..., 2m) int64 codes 0..15."""
    lo = (packed & 0x0F).long()
    hi = (packed >> 4).long()
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def dequantize(q: NF4Tensor) -> torch.Tensor:
    """The float32 values the codes stand for, shape (..., numel)."""
    codes = unpack_codes(q.codes)
    values = NF4_LEVELS[codes]
    lead = values.shape[:-1]
    nb = q.absmax.shape[-1]
    values = values.view(*lead, nb, q.block_size) * q.absmax.unsqueeze(-1)
    return values.reshape(*lead, nb * q.block_size)[..., : q.numel]
