"""The fast ``fit`` of Skip2-LoRA and InstantFT: fill the cache, then run every epoch in one
call of a compiled loop (or the pure-torch loop), training the same adapters as
:meth:`instantft.methods.skip_lora._SkipMethod.reference_fit` step for step.

It works on any backbone: the tap layout (:class:`~instantft.engine.layout.Layout`) says which
adapter reads the data row and which a slice of the cache row.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from instantft import nf4
from instantft.adapters import SkipAdapters
from instantft.backbones import Backbone
from instantft.cache import CacheSource, ForwardCache, Storage
from instantft.data import ImageSet
from instantft.engine.fill import compiled_fill, compiled_rows_into, lenet_fast_path, torch_rows_into
from instantft.engine.layout import Layout
from instantft.engine.store import FastForwardCache, Ready
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


def fast_cache(sizes: list[int], capacity: int, storage: Storage | None, max_bytes: int | None, backend: str
               ) -> ForwardCache:  # fmt: skip
    """An empty Forward Cache that the engine fills in place."""
    return FastForwardCache(sizes, capacity, storage or "fp32", max_bytes, use_numba=backend == "numba")


def fill_cache(
    backbone: Backbone, cache: ForwardCache, source: CacheSource, data: ImageSet, use_numba: bool, use_c: bool = False
) -> ForwardCache:
    """Bind the cache to (backbone, data) and run the base forward for the samples it does not
    hold yet, straight into storage."""
    cache.bind(source)
    todo = torch.nonzero(~cache.contains(data.indices)).flatten()
    if not len(todo):
        return cache
    rows = slice(None) if len(todo) == len(data) else todo
    images, keys = data.images[rows], data.indices[rows]
    if use_c:  # the C core: a chain backbone's forward in C, NF4 encoded in C (engine/chain.py)
        from instantft.engine.chain import c_fill_cache

        c_fill_cache(backbone, cache, keys, images, source.model)
        return cache
    compiled = use_numba and lenet_fast_path(backbone)
    with numba_cache_guard() if use_numba else contextlib.nullcontext():  # numba kernels: fill, NF4 encoder
        if isinstance(cache, FastForwardCache) and compiled:
            cache.fill_slots(keys, lambda start: compiled_fill(backbone, images, cache, start))
        elif isinstance(cache, FastForwardCache):

            def write(dst: torch.Tensor, ready: Ready) -> None:
                torch_rows_into(backbone, images, dst, ready)

            cache.fill(keys, write)
        else:  # a cache the reference loop made: its own put
            out = torch.empty(len(keys), cache.width)
            if compiled:
                compiled_rows_into(backbone, images, out)
            else:
                torch_rows_into(backbone, images, out)
            cache.put(keys, out)
    return cache


def fast_fit(
    backbone: Backbone,
    adapters: SkipAdapters,
    cache: ForwardCache,
    source: CacheSource,
    data: ImageSet,
    config: FineTuneConfig,
    on_step: Callable[[int, int], None] | None,
    backend: str,
) -> FitResult:
    """Fine-tune ``adapters`` on ``data`` through ``cache`` with the ``numba`` or ``torch`` backend.

    With ``on_step`` the loop runs one epoch per call and reports that epoch's steps when it
    ends (a compiled loop cannot call back into Python cheaply). Divergence (a non-finite or
    exploding loss, non-finite adapters after the last update) raises before anything is kept.
    """
    result = FitResult()
    start = time.perf_counter()
    use_numba = backend == "numba"
    fill_cache(backbone, cache, source, data, use_numba, use_c=backend == "c")
    slot_of = cache.slots(data.indices)
    if bool((slot_of < 0).any()):
        raise InstantFTError("forward cache is missing samples after the fill")
    plan = Schedule(len(data), config)
    layout = Layout.for_backbone(backbone, config.rank)
    A, B = layout.pack(adapters.A, adapters.B)
    images = data.images.reshape(len(data), -1).contiguous()
    losses = np.full(len(plan), np.nan)
    run = {"numba": _numba_runner, "c": _c_runner}.get(backend, _torch_runner)
    train = run(cache, layout, images, data.labels, slot_of, plan, A, B, config, losses)
    ranges = plan.epoch_ranges() if on_step else [(0, len(plan))]
    monitor = LossMonitor()
    for first, last in ranges:
        done = train(first, last)
        # a loop stops early only at a non-finite loss, which this raises on
        monitor.check_all(losses[first : first + done].tolist(), plan.epoch[first : first + done],
                          plan.step[first : first + done])  # fmt: skip
        if on_step:
            for s in range(first, last):
                on_step(plan.epoch[s], plan.step[s])
    monitor.check_tensors({"the packed adapters A": A, "the packed adapters B": B})
    layout.unpack(A, B, adapters.A, adapters.B)
    result.steps = len(plan)
    result.epoch_losses = plan.epoch_losses(losses)
    result.seconds = time.perf_counter() - start
    result.cache_bytes = cache.nbytes
    return result


Runner = Callable[[int, int], int]

#: what numba raises when its on-disk cache of compiled kernels is truncated or garbage
_CACHE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, OSError)


@contextlib.contextmanager
def numba_cache_guard() -> Iterator[None]:
    """numba loads its compiled-code cache (pickle files beside engine/kernels.py) on a kernel's
    first call: a damaged file there is one line naming what to delete, not a traceback."""
    try:
        yield
    except _CACHE_ERRORS as exc:
        where = Path(__file__).parent / "__pycache__"
        raise InstantFTError(
            f"numba's compiled-kernel cache failed to load ({type(exc).__name__}: {exc}); delete the "
            f"kernels.*.nbi/.nbc files in {where} or use --engine c"
        ) from None


def _guard_numba_cache(run: Runner) -> Runner:
    def guarded(first: int, last: int) -> int:
        with numba_cache_guard():
            return run(first, last)

    return guarded


def _numba_runner(
    cache: ForwardCache,
    layout: Layout,
    images: torch.Tensor,
    labels: torch.Tensor,
    slot_of: torch.Tensor,
    plan: Schedule,
    A: torch.Tensor,
    B: torch.Tensor,
    config: FineTuneConfig,
    losses: np.ndarray,
) -> Runner:
    """``train(first, last)`` over the compiled loop; A, B and losses are updated in place."""
    from instantft.engine import kernels

    seg = layout.segments()
    common = (slot_of.numpy(), labels.numpy(), plan.order.numpy(), plan.offsets.numpy())
    a, b = A.numpy(), B.numpy()
    lr, scale = np.float32(config.lr), np.float32(config.scale)
    x = images.numpy()
    if cache.storage == "fp32":
        return _guard_numba_cache(lambda first, last: kernels.train_fp32(
            x, cache.rows.numpy(), *common, first, last, a, b, seg, layout.logit_offset, lr, scale, losses
        ))  # fmt: skip
    if cache.block_size % 16:
        raise InstantFTError(f"the compiled NF4 loop needs a block size divisible by 16, got {cache.block_size}")
    levels = nf4.NF4_LEVELS.numpy()
    return _guard_numba_cache(lambda first, last: kernels.train_nf4(
        x, cache.codes.numpy(), cache.absmax.numpy(), levels, cache.block_size, *common, first, last, a, b, seg,
        layout.logit_offset, lr, scale, losses,
    ))  # fmt: skip


def _c_runner(
    cache: ForwardCache,
    layout: Layout,
    images: torch.Tensor,
    labels: torch.Tensor,
    slot_of: torch.Tensor,
    plan: Schedule,
    A: torch.Tensor,
    B: torch.Tensor,
    config: FineTuneConfig,
    losses: np.ndarray,
) -> Runner:
    """``train(first, last)`` over the C core's loop (:mod:`instantft.engine.cengine`, the numba
    loop's semantics); A, B and losses are updated in place."""
    from instantft.engine import cengine

    seg = layout.segments()
    common = (slot_of.numpy(), labels.numpy(), plan.order.numpy(), plan.offsets.numpy())
    a, b, x, lr, scale = A.numpy(), B.numpy(), images.numpy(), config.lr, config.scale
    if cache.storage == "fp32":
        rows = cache.rows.numpy()
        return lambda first, last: cengine.train_fp32(
            x, rows, *common, first, last, a, b, seg, layout.logit_offset, lr, scale, losses
        )
    codes, absmax = cache.codes.numpy(), cache.absmax.numpy()
    return lambda first, last: cengine.train_nf4(
        x, codes, absmax, cache.block_size, *common, first, last, a, b, seg, layout.logit_offset, lr, scale, losses
    )


def _torch_runner(
    cache: ForwardCache,
    layout: Layout,
    images: torch.Tensor,
    labels: torch.Tensor,
    slot_of: torch.Tensor,
    plan: Schedule,
    A: torch.Tensor,
    B: torch.Tensor,
    config: FineTuneConfig,
    losses: np.ndarray,
) -> Runner:
    """``train(first, last)`` over the pure-torch loop (no numba)."""
    from instantft.engine.torch_loop import TorchTrainer

    C, K, R = B.shape
    Bflat = B.view(C, K * R)  # column k·R + r is B_k[:, r]; a view, trained in place
    nb_max = int((plan.offsets[1:] - plan.offsets[:-1]).max())
    trainer = TorchTrainer(layout, images, labels, A, Bflat, nb_max, config.lr, config.scale)

    def train(first: int, last: int) -> int:
        for s in range(first, last):
            rows = plan.order[plan.offsets[s] : plan.offsets[s + 1]]
            slots = slot_of[rows]
            if cache.storage == "fp32":
                views = trainer.gather_fp32(rows, slots, cache.rows)
            else:
                views = trainer.gather_nf4(rows, slots, cache.codes, cache.absmax)
            losses[s] = loss = trainer.step(views, rows)
            if not np.isfinite(loss):
                return s + 1 - first
        return last - first

    return train
