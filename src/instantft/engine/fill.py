"""Filling the Forward Cache fast: the frozen base forward of many samples, written straight into
cache rows ``[cached taps | f(x)]``, equal in value (float rounding aside) to
:meth:`instantft.backbones.Backbone.trace`.

This is the largest single cost of a Skip2-LoRA run (0.85 of its 1.29 GFLOP on LeNet-5). Two ways:

- compiled (numba), for backbones that have that capability (:func:`lenet_fast_path`: LeNet-5
  with its paper taps): the whole forward of one sample is one kernel call
  (:func:`instantft.engine.kernels.fill_rows`), samples split over the torch thread count with
  plain threads. No torch op runs, so there is no OpenMP barrier for another process on the
  machine to stall (on this 2-core box one busy neighbour made each barrier of a batched torch
  forward cost milliseconds), and an NF4 row is encoded while it is still in L1;
- torch (any backbone): a batched no-grad forward through the tap hooks in passes of
  :data:`TORCH_CHUNK` samples, each tap written into its slice of the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from instantft import nf4
from instantft.backbones import Backbone
from instantft.cache import ForwardCache
from instantft.models import LeNet5

#: samples per torch pass: the activations of a pass stay in L2 instead of streaming through memory
TORCH_CHUNK = 256

#: samples per piece of work handed to a thread
GRAIN = 64

_pools: dict[int, ThreadPoolExecutor] = {}


def split_rows(n: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(lo, hi)`` over rows 0..n-1 on ``torch.get_num_threads()`` threads.

    For the compiled kernels (``nogil``): plain threads give them the cores torch would use,
    without a second OpenMP runtime (numba's ``parallel=True``) competing with torch's. The
    threads take pieces of :data:`GRAIN` rows from a shared queue, so when a core is busy
    elsewhere (another process, or torch's OpenMP threads still spinning for a few ms after a
    torch op) the other thread simply does more of the work.
    """
    parts = max(1, min(torch.get_num_threads(), n // GRAIN))
    if parts == 1:
        work(0, n)
        return
    if parts not in _pools:
        _pools[parts] = ThreadPoolExecutor(parts - 1, thread_name_prefix="instantft-engine")
    pieces = iter([(lo, min(lo + GRAIN, n)) for lo in range(0, n, GRAIN)])

    def drain() -> None:
        for lo, hi in pieces:  # next() on a shared iterator is atomic under the GIL
            work(lo, hi)

    futures = [_pools[parts].submit(drain) for _ in range(parts - 1)]
    drain()
    for f in futures:
        f.result()


#: the taps the compiled LeNet-5 forward writes (the paper's x0..x4)
LENET_TAPS = ("conv1", "conv2", "fc1", "fc2", "fc3")


def lenet_fast_path(backbone: Backbone) -> bool:
    """Whether the compiled LeNet-5 forward can fill this backbone's cache: a LeNet5 tapped at
    the inputs of its five layers, with 5×5 convs of an even number of output channels."""
    model = backbone.model
    if type(model) is not LeNet5:
        return False
    taps = [(t.name, t.point, t.is_model_input) for t in backbone.taps]
    if taps != [(name, "input", k == 0) for k, name in enumerate(LENET_TAPS)]:  # the kernel's row layout
        return False
    return all(c.kernel_size == (5, 5) and c.out_channels % 2 == 0 for c in (model.conv1, model.conv2))


def _weights(base: LeNet5) -> list[np.ndarray]:
    params = []
    for layer in base.layers:
        weight, bias = layer.weight, layer.bias
        assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)  # every layer has both
        params += [weight.detach().contiguous().numpy(), bias.detach().contiguous().numpy()]
    return params


@torch.no_grad()
def compiled_rows_into(backbone: Backbone, images: torch.Tensor, out: torch.Tensor) -> None:
    """The cache rows of ``images`` (N, C, H, W) into ``out`` (N, width) float32, compiled."""
    from instantft.engine.kernels import fill_rows

    base = backbone.model
    assert isinstance(base, LeNet5)
    x, rows, w, pad = images.contiguous().numpy(), out.numpy(), _weights(base), base.conv1.padding[0]
    split_rows(len(x), lambda a, b: fill_rows(x[a:b], pad, *w, rows[a:b]))  # type: ignore[call-arg]


@torch.no_grad()
def compiled_fill(backbone: Backbone, images: torch.Tensor, cache: ForwardCache, start: int) -> None:
    """The cache rows of ``images`` straight into ``cache`` storage slots ``start..``: fp32 rows,
    or NF4 codes encoded row by row (bit-identical to :func:`instantft.nf4.quantize`)."""
    from instantft.engine.kernels import fill_rows, fill_rows_nf4

    base = backbone.model
    assert isinstance(base, LeNet5)
    n = len(images)
    x, w, pad = images.contiguous().numpy(), _weights(base), base.conv1.padding[0]
    if cache.storage == "fp32":
        rows = cache.rows[start : start + n].numpy()
        split_rows(n, lambda a, b: fill_rows(x[a:b], pad, *w, rows[a:b]))  # type: ignore[call-arg]
    else:
        codes, absmax = cache.codes[start : start + n].numpy(), cache.absmax[start : start + n].numpy()
        thresholds, bs = nf4.NF4_THRESHOLDS.numpy(), cache.block_size
        split_rows(
            n, lambda a, b: fill_rows_nf4(x[a:b], pad, *w, thresholds, bs, codes[a:b], absmax[a:b])  # type: ignore[call-arg]
        )


@torch.no_grad()
def torch_rows_into(
    backbone: Backbone, images: torch.Tensor, out: torch.Tensor, ready: Callable[[int, int], None] | None = None
) -> None:
    """The cache rows of ``images`` into ``out`` with torch ops (any backbone), calling
    ``ready(lo, hi)`` after each pass has finished rows lo..hi-1."""
    cached = [k for k, t in enumerate(backbone.taps) if not t.is_model_input]
    bounds = np.cumsum([0, *backbone.cache_sizes]).tolist()
    if out.shape != (len(images), bounds[-1]):
        raise ValueError(f"out must be ({len(images)}, {bounds[-1]}), got {tuple(out.shape)}")
    for lo in range(0, len(images), TORCH_CHUNK):
        rows = out[lo : lo + TORCH_CHUNK]
        xs, logits = backbone.trace(images[lo : lo + len(rows)])
        for j, t in enumerate([*(xs[k] for k in cached), logits]):
            rows[:, bounds[j] : bounds[j + 1]] = t
        if ready is not None:
            ready(lo, lo + len(rows))
