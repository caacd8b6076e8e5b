"""The C engine's ``fit`` of Skip2-LoRA and InstantFT: fill the cache, then run the epochs in the
C core's loop, training the same adapters as
:meth:`instantft.methods.skip_lora._SkipMethod.reference_fit` step for step.

It works on any backbone: the tap layout (:class:`~instantft.engine.layout.Layout`) says which
adapter reads the data row and which a slice of the cache row.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import torch

from instantft.adapters import SkipAdapters
from instantft.backbones import Backbone
from instantft.cache import CacheSource, ForwardCache
from instantft.data import ImageSet
from instantft.engine import cengine
from instantft.engine.fill import fill_cache
from instantft.engine.layout import Layout
from instantft.errors import InstantFTError
from instantft.training import FineTuneConfig, FitResult, LossMonitor, schedule


class Schedule:
    """The whole run's batches as flat arrays (from :func:`instantft.training.schedule`, so
    the order is the reference's): step s trains on rows ``order[offsets[s]:offsets[s+1]]``."""

    def __init__(self, n: int, config: FineTuneConfig) -> None:
        epochs, steps, batches = zip(*schedule(n, config), strict=True)
        self.epoch: list[int] = list(epochs)
        self.step: list[int] = list(steps)
        self.order = torch.cat(batches)
        self.offsets = torch.from_numpy(np.cumsum([0, *(b.shape[0] for b in batches)]))

    def __len__(self) -> int:
        return len(self.epoch)

    def epoch_ranges(self) -> list[tuple[int, int]]:
        """[first, last) step of each epoch."""
        edges = [0] + [s for s in range(1, len(self)) if self.epoch[s] != self.epoch[s - 1]] + [len(self)]
        return list(itertools.pairwise(edges))

    def epoch_losses(self, losses: np.ndarray) -> list[float]:
        return [float(np.mean(losses[a:b])) for a, b in self.epoch_ranges()]


def fit(
    backbone: Backbone,
    adapters: SkipAdapters,
    cache: ForwardCache,
    source: CacheSource,
    data: ImageSet,
    config: FineTuneConfig,
    on_step: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Fine-tune ``adapters`` on ``data`` through ``cache`` on the C core.

    With ``on_step`` the loop runs one epoch per call and reports that epoch's steps when it
    ends (a C loop cannot call back into Python cheaply). Divergence (a non-finite or exploding
    loss, non-finite adapters after the last update) raises before anything is kept.
    """
    result = FitResult()
    start = time.perf_counter()
    cache.bind(source)
    todo = torch.nonzero(~cache.contains(data.indices)).flatten()
    if len(todo):
        rows = slice(None) if len(todo) == len(data) else todo
        fill_cache(backbone, cache, data.indices[rows], data.images[rows], source.model)
    slot_of = cache.slots(data.indices)
    if bool((slot_of < 0).any()):
        raise InstantFTError("forward cache is missing samples after the fill")
    plan = Schedule(len(data), config)
    layout = Layout.for_backbone(backbone, config.rank)
    packed = cengine.Adapters.pack(layout, adapters.A, adapters.B, config.scale)
    losses = np.full(len(plan), np.nan)
    run = cengine.Training(
        cengine.CacheView.of(cache),
        data.images.reshape(len(data), -1).contiguous().numpy(),
        slot_of.numpy(),
        data.labels.numpy(),
        (plan.order.numpy(), plan.offsets.numpy()),
        losses,
        config.lr,
    )
    ranges = plan.epoch_ranges() if on_step else [(0, len(plan))]
    monitor = LossMonitor()
    for first, last in ranges:
        done, _status = run.steps(packed, first, last)
        # the loop stops early only at a non-finite loss, which this raises on
        monitor.check_all(losses[first : first + done].tolist(), plan.epoch[first : first + done],
                          plan.step[first : first + done])  # fmt: skip
        if on_step:
            for s in range(first, last):
                on_step(plan.epoch[s], plan.step[s])
    monitor.check_tensors({"the packed adapters A": torch.from_numpy(packed.A),
                           "the packed adapters B": torch.from_numpy(packed.B)})  # fmt: skip
    packed.unpack(adapters.A, adapters.B)
    result.steps = len(plan)
    result.epoch_losses = plan.epoch_losses(losses)
    result.seconds = time.perf_counter() - start
    result.cache_bytes = cache.nbytes
    return result


__all__ = ["Schedule", "fit"]
