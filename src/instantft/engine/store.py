"""A Forward Cache that is filled in place, for the fast engine.

:class:`instantft.cache.ForwardCache` takes finished rows and, for NF4, quantises them with torch
ops (~100 ms for 1,024 rows here: slower than the whole fine-tune should be). This subclass keeps
its storage, keys, identity checks and byte limit, and changes only how rows get in:
:meth:`FastForwardCache.fill_slots` lets the compiled fill write fp32 rows or NF4 codes straight
into storage; :meth:`FastForwardCache.fill` hands a writer the fp32 slice, or a scratch block
that is encoded (compiled encoder, bit-identical to :func:`instantft.nf4.quantize`, when numba is
there) as soon as rows are ready.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from instantft import nf4
from instantft.cache import ForwardCache, Storage

#: ``ready(lo, hi)``: rows lo..hi-1 of a fill are written
Ready = Callable[[int, int], None]


class FastForwardCache(ForwardCache):
    """:class:`ForwardCache` with an in-place :meth:`fill`; ``use_numba`` picks the NF4 encoder."""

    def __init__(
        self,
        sizes: Sequence[int],
        capacity: int,
        storage: Storage = "fp32",
        max_bytes: int | None = None,
        block_size: int = nf4.BLOCK_SIZE,
        use_numba: bool = True,
    ) -> None:
        super().__init__(sizes, capacity, storage, max_bytes, block_size)
        self.use_numba = use_numba
        self._scratch = torch.empty(0, self.width)

    def put(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        if rows.shape != (len(keys), self.width):
            raise ValueError(f"rows must be ({len(keys)}, {self.width}), got {tuple(rows.shape)}")

        def write(dst: torch.Tensor, ready: Ready) -> None:
            dst.copy_(rows)
            ready(0, len(rows))

        self.fill(keys, write)

    def fill(self, keys: torch.Tensor, write: Callable[[torch.Tensor, Ready], None]) -> None:
        """Store ``len(keys)`` new rows that ``write(dst, ready)`` puts into ``dst`` (n, width)
        float32, calling ``ready(lo, hi)`` as soon as rows lo..hi-1 are complete (NF4 encodes
        them then, while they are still in cache).

        The same checks as :meth:`ForwardCache.put`, in the same order; the keys are recorded
        only once their rows are in.
        """
        n = len(keys)
        self.check_room(n)
        start = self._count
        if self.storage == "fp32":
            write(self.rows[start : start + n], lambda lo, hi: None)
        else:
            if len(self._scratch) < n:
                self._scratch = torch.empty(n, self.width)
            rows = self._scratch[:n]
            write(rows, lambda lo, hi: self._encode(rows[lo:hi], start + lo, start + hi))
        self._record(keys, start)

    def fill_slots(self, keys: torch.Tensor, write: Callable[[int], None]) -> None:
        """Store ``len(keys)`` new rows that ``write(start)`` puts straight into storage slots
        ``start..start+n-1`` (``rows``, or ``codes`` and ``absmax``): for the compiled fill,
        which encodes NF4 itself."""
        self.check_room(len(keys))
        start = self._count
        write(start)
        self._record(keys, start)

    def _encode(self, rows: torch.Tensor, start: int, stop: int) -> None:
        if self.use_numba:
            from instantft.engine.kernels import encode_nf4

            codes, absmax = self.codes[start:stop].numpy(), self.absmax[start:stop].numpy()
            encode_nf4(rows.numpy(), nf4.NF4_THRESHOLDS.numpy(), self.block_size, codes, absmax)
        else:
            q = nf4.quantize(rows, self.block_size)
            self.codes[start:stop] = q.codes
            self.absmax[start:stop] = q.absmax
