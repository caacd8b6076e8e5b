"""The Forward Cache (Skip2-LoRA, InstantFT §3.1): the frozen network's activations, keyed by
sample index, so that only the first epoch runs the base network.

Because every skip adapter reads a tap of the frozen backbone and writes straight to the logits,
the taps and the base logits f(x) of a sample never change during fine-tuning. One cache row
holds them concatenated, its widths given by the backbone's taps
(:attr:`instantft.backbones.Backbone.cache_sizes`; LeNet-5: 1176+400+120+84+10 = 1,790 values);
a tap that is the model input itself (LeNet-5's x0) comes from the dataset instead.

Storage is fp32 (LeNet-5: 7,160 B a row) or NF4 (:mod:`instantft.nf4`: 28 blocks of 64 → 896
code bytes + 112 absmax bytes = 1,008 B a row, 7.10× smaller), behind one interface. The cache
remembers what filled it (a fingerprint of the frozen weights, buffers and tap layout, and of the
dataset): used with another model or dataset it raises, so stale activations are never used
silently. The byte limit fails loudly and never evicts by itself; a bounded cache for streams
drops rows explicitly with :meth:`ForwardCache.evict` (:mod:`instantft.stream` decides which).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from instantft import nf4
from instantft.errors import InstantFTError

Storage = Literal["fp32", "nf4"]
STORAGES: tuple[Storage, ...] = ("fp32", "nf4")


@dataclass(frozen=True)
class CacheSource:
    """What a cache was filled from."""

    model: str
    dataset: str


class ForwardCache:
    """Rows of cached activations addressed by integer sample index (key)."""

    def __init__(
        self,
        sizes: Sequence[int],
        capacity: int,
        storage: Storage = "fp32",
        max_bytes: int | None = None,
        block_size: int = nf4.BLOCK_SIZE,
    ) -> None:
        if storage not in STORAGES:
            raise InstantFTError(f"unknown cache storage {storage!r}; valid: {', '.join(STORAGES)}")
        self.sizes = list(sizes)
        self.width = sum(self.sizes)
        self.capacity = capacity
        self.storage: Storage = storage
        self.max_bytes = max_bytes
        self.block_size = block_size
        if max_bytes is not None and max_bytes < 0:
            raise InstantFTError(f"--cache-max-bytes must be >= 0, got {max_bytes}")
        self.source: CacheSource | None = None
        self._slot_of = torch.full((0,), -1, dtype=torch.long)
        self._count = 0
        if storage == "fp32":
            self.rows = torch.empty(capacity, self.width, dtype=torch.float32)
        else:
            nb = nf4.blocks_for(self.width, block_size)
            self.codes = torch.empty(capacity, nb * block_size // 2, dtype=torch.uint8)
            self.absmax = torch.empty(capacity, nb, dtype=torch.float32)

    # --- identity -------------------------------------------------------------------------
    def bind(self, source: CacheSource) -> None:
        """Attach the cache to a (model, dataset); refuse a different one once filled from another."""
        if self.source is None:
            self.source = source
            return
        if source.model != self.source.model:
            raise InstantFTError(
                "forward cache was filled from another base model "
                f"(weights {self.source.model[:12]}…, now {source.model[:12]}…); call clear() or use a new cache"
            )
        if source.dataset != self.source.dataset:
            raise InstantFTError(
                f"forward cache was filled from dataset {self.source.dataset}, not {source.dataset}; "
                "call clear() or use a new cache"
            )

    def clear(self) -> None:
        self.source = None
        self._slot_of = torch.full((0,), -1, dtype=torch.long)
        self._count = 0

    # --- size ------------------------------------------------------------------------------
    @property
    def row_bytes(self) -> int:
        return 4 * self.width if self.storage == "fp32" else nf4.nbytes_per_row(self.width, self.block_size)

    @property
    def nbytes(self) -> int:
        """Exact bytes of the activations held (codes and scales for NF4)."""
        return self._count * self.row_bytes

    def __len__(self) -> int:
        return self._count

    # --- access ----------------------------------------------------------------------------
    def slots(self, keys: torch.Tensor) -> torch.Tensor:
        """Storage slot of each key, -1 where absent."""
        out = torch.full_like(keys, -1)
        inside = keys < len(self._slot_of)
        out[inside] = self._slot_of[keys[inside]]
        return out

    def contains(self, keys: torch.Tensor) -> torch.Tensor:
        return self.slots(keys) >= 0

    def check_room(self, n: int) -> None:
        """Raise unless ``n`` more rows fit the byte limit and the capacity (checked before any
        work, so a fill that would not fit costs nothing)."""
        if self.max_bytes is not None and (self._count + n) * self.row_bytes > self.max_bytes:
            hint = " or use NF4 storage" if self.storage == "fp32" else ""
            raise InstantFTError(
                f"forward cache byte limit exceeded: {self._count + n} entries × {self.row_bytes} B "
                f"> {self.max_bytes} B (raise the limit{hint})"
            )
        if self._count + n > self.capacity:
            raise InstantFTError(f"forward cache is full ({self.capacity} entries)")

    def _record(self, keys: torch.Tensor, start: int) -> None:
        """Map keys to the slots ``start..start+n-1`` once their rows are stored."""
        n = len(keys)
        top = int(keys.max()) + 1 if n else 0
        if top > len(self._slot_of):
            grown = torch.full((max(top, 2 * len(self._slot_of)),), -1, dtype=torch.long)
            grown[: len(self._slot_of)] = self._slot_of
            self._slot_of = grown
        self._slot_of[keys] = torch.arange(start, start + n)
        self._count += n

    def fill(self, keys: torch.Tensor, write: Callable[[int], None]) -> None:
        """The one way rows enter the cache: room is checked first (a fill that would not fit
        costs nothing), ``write(start)`` stores the rows of ``keys`` in slots ``start..start+n-1``
        (:meth:`store`, or the C chain forward writing fp32 rows / NF4 codes in place), and only
        then are the keys recorded."""
        n = len(keys)
        self.check_room(n)
        start = self._count
        write(start)
        self._record(keys, start)

    def store(self, rows: torch.Tensor, start: int) -> None:
        """Write finished fp32 rows (n, width) into slots ``start..``, NF4-encoded for an NF4
        cache; for a ``write`` of :meth:`fill`."""
        n = len(rows)
        if self.storage == "fp32":
            self.rows[start : start + n] = rows
        else:
            q = nf4.quantize(rows, self.block_size)
            self.codes[start : start + n] = q.codes
            self.absmax[start : start + n] = q.absmax

    def put(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Store rows (B, width) under keys that are not yet present."""
        if rows.shape != (len(keys), self.width):
            raise ValueError(f"rows must be ({len(keys)}, {self.width}), got {tuple(rows.shape)}")
        self.fill(keys, lambda start: self.store(rows, start))

    def get(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows (B, width) float32 for present keys (dequantised when stored as NF4)."""
        slots = self.slots(keys)
        if bool((slots < 0).any()):
            missing = keys[slots < 0][:5].tolist()
            raise KeyError(f"forward cache has no entry for sample indices {missing}")
        if self.storage == "fp32":
            return self.rows[slots]
        return nf4.dequantize(nf4.NF4Tensor(self.codes[slots], self.absmax[slots], self.width, self.block_size))

    def split(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Cut rows into the cached tensors [x1, x2, x3, x4, logits] (views)."""
        return list(torch.split(rows, self.sizes, dim=1))

    # --- eviction (bounded caches, instantft.stream) -----------------------------------------
    def keys(self) -> torch.Tensor:
        """The keys held, in slot order."""
        present = torch.nonzero(self._slot_of >= 0).flatten()
        return present[torch.argsort(self._slot_of[present])]

    def evict(self, keys: torch.Tensor) -> int:
        """Drop the rows of ``keys`` (absent keys are ignored); returns how many were dropped.

        The freed slots are reused by compaction: the last live rows move into them, so storage
        stays dense (slots 0..len-1) and :meth:`fill` keeps appending at ``len(self)``. An
        evicted key that is put again is computed again."""
        keys = torch.unique(keys)
        slots = self.slots(keys)
        keys, slots = keys[slots >= 0], slots[slots >= 0]
        if not len(keys):
            return 0
        key_of = torch.full((self._count,), -1, dtype=torch.long)
        held = self.keys()
        key_of[self._slot_of[held]] = held
        self._slot_of[keys] = -1
        key_of[slots] = -1
        left = self._count - len(keys)
        holes = slots[slots < left].sort().values
        movers = torch.nonzero(key_of[left:] >= 0).flatten() + left
        if len(holes):
            if self.storage == "fp32":
                self.rows[holes] = self.rows[movers]
            else:
                self.codes[holes] = self.codes[movers]
                self.absmax[holes] = self.absmax[movers]
            self._slot_of[key_of[movers]] = holes
        self._count = left
        return len(keys)
