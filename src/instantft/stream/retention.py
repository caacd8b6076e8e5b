"""What a bounded memory keeps of a stream: retention policies over sample ids, and the bounded
Forward Cache that follows them.

A policy decides, arrival by arrival, which ``capacity`` samples are held (their images and
labels, x0 of the cache row). Before each adaptation the Forward Cache is synchronised with the
policy: rows of samples the policy dropped are evicted (their slots reused), rows of samples it
holds but the cache does not are computed by the fit's fill - once: a cached id is never
recomputed, an evicted id that comes back is (:class:`BoundedCache` counts both).

- ``window``: the last ``capacity`` distinct samples (a sample seen again moves to the front);
- ``reservoir``: Vitter's algorithm R over arrivals, a uniform sample of everything seen
  (seeded); an arrival already held is not drawn again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from instantft import nf4
from instantft.cache import ForwardCache, Storage
from instantft.errors import InstantFTError

POLICIES = ("window", "reservoir")


class Retention:
    """Held samples: ``capacity`` slots of image + label, addressed by sample id."""

    name = "base"

    def __init__(self, capacity: int, image_shape: Sequence[int]) -> None:
        self.capacity = capacity
        self.images = torch.zeros((capacity, *image_shape))
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.ids = torch.full((capacity,), -1, dtype=torch.long)
        self.slot_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.slot_of)

    def _store(self, slot: int, sample: int, image: torch.Tensor, label: int) -> None:
        old = int(self.ids[slot])
        if old >= 0:
            del self.slot_of[old]
        self.ids[slot], self.images[slot], self.labels[slot] = sample, image, label
        self.slot_of[sample] = slot

    def offer(self, sample: int, image: torch.Tensor, label: int) -> None:
        raise NotImplementedError

    def add(self, ids: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> None:
        for i, sample in enumerate(ids.tolist()):
            self.offer(sample, images[i], int(labels[i]))

    def held(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, images, labels) of the held samples, in slot order."""
        used = torch.nonzero(self.ids >= 0).flatten()
        return self.ids[used], self.images[used], self.labels[used]

    @property
    def nbytes(self) -> int:
        """Bytes of the held images and labels (what x0 costs beside the cache)."""
        return len(self) * (self.images[0].numel() * self.images.element_size() + self.labels.element_size())


class SlidingWindow(Retention):
    name = "window"

    def __init__(self, capacity: int, image_shape: Sequence[int]) -> None:
        super().__init__(capacity, image_shape)
        self.order: OrderedDict[int, None] = OrderedDict()

    def offer(self, sample: int, image: torch.Tensor, label: int) -> None:
        if sample in self.slot_of:
            self.order.move_to_end(sample)
            return
        if len(self) < self.capacity:
            slot = len(self)
        else:
            oldest, _ = self.order.popitem(last=False)
            slot = self.slot_of[oldest]
        self._store(slot, sample, image, label)
        self.order[sample] = None


class Reservoir(Retention):
    name = "reservoir"

    def __init__(self, capacity: int, image_shape: Sequence[int], seed: int = 0) -> None:
        super().__init__(capacity, image_shape)
        self.rng = np.random.default_rng([seed, 11])
        self.seen = 0

    def offer(self, sample: int, image: torch.Tensor, label: int) -> None:
        self.seen += 1
        if sample in self.slot_of:
            return
        if len(self) < self.capacity:
            self._store(len(self), sample, image, label)
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.capacity:
            self._store(j, sample, image, label)


def make_retention(policy: str, capacity: int, image_shape: Sequence[int], seed: int = 0) -> Retention:
    if policy == "window":
        return SlidingWindow(capacity, image_shape)
    if policy == "reservoir":
        return Reservoir(capacity, image_shape, seed)
    raise InstantFTError(f"unknown retention policy {policy!r}; valid: {', '.join(POLICIES)}")


class BoundedCache(ForwardCache):
    """A Forward Cache of at most ``capacity`` rows that counts what it computes: ``computed``
    rows in all, ``recomputed`` of them for ids it had held before and evicted."""

    def __init__(self, sizes: Sequence[int], capacity: int, storage: Storage = "fp32") -> None:
        super().__init__(sizes, capacity, storage)
        self.computed = 0
        self.recomputed = 0
        self.evicted = 0
        self.peak_bytes = 0
        self.ever: set[int] = set()
        self.log: list[list[int]] = []  # keys of each fill, in order (tests)

    def _record(self, keys: torch.Tensor, start: int) -> None:
        if bool(self.contains(keys).any()):
            raise InstantFTError("bounded cache: a held id was computed again")
        super()._record(keys, start)
        ks = keys.tolist()
        self.log.append(ks)
        self.computed += len(ks)
        self.recomputed += sum(k in self.ever for k in ks)
        self.ever.update(ks)
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def follow(self, held: torch.Tensor) -> None:
        """Evict every row whose id is not in ``held``."""
        keys = self.keys()
        if len(keys):
            drop = keys[~torch.isin(keys, held)]
            self.evicted += self.evict(drop)


def row_bytes(sizes: Sequence[int], storage: Storage) -> int:
    width = sum(sizes)
    return 4 * width if storage == "fp32" else nf4.nbytes_per_row(width)
