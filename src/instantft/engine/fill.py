"""Filling the Forward Cache fast: the frozen base forward of many samples, written straight into
cache rows ``[x1 | x2 | x3 | x4 | f(x)]``, equal in value (float rounding aside) to
:meth:`instantft.models.LeNet5.trace`.

This is the largest single cost of a Skip2-LoRA run (0.85 of its 1.29 GFLOP). Where the time goes
in the plain batched ``trace`` on this CPU build: conv1 has one input channel, a shape oneDNN
handles poorly (~6 GFLOP/s), and ``F.max_pool2d`` is slow. So conv1 + ReLU + pool is a compiled
kernel (:func:`conv1_relu_pool`) when numba is there, conv2 and the FC layers stay with
oneDNN/MKL (fast at those shapes), pooling uses :func:`instantft.models.pool2x2`, and every
layer output is written into its slice of the destination rows (no ``cat``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from instantft.models import LeNet5, pool2x2

#: samples the cache is filled with at a time (one conv1 pass over them, then the torch layers)
CHUNK = 1024
#: samples per torch pass: the activations of a pass stay in L2 instead of streaming through memory
TORCH_CHUNK = 1024


_pools: dict[int, ThreadPoolExecutor] = {}


def split_rows(n: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(lo, hi)`` over rows 0..n-1 cut into ``torch.get_num_threads()`` parts at once.

    For the compiled kernels (``nogil``): plain threads give them the cores torch would use,
    without a second OpenMP runtime (numba's ``parallel=True``) competing with torch's.
    """
    parts = max(1, min(torch.get_num_threads(), n // 16))
    if parts == 1:
        work(0, n)
        return
    if parts not in _pools:
        _pools[parts] = ThreadPoolExecutor(parts - 1, thread_name_prefix="instantft-engine")
    edges = np.linspace(0, n, parts + 1).astype(int).tolist()
    futures = [_pools[parts].submit(work, a, b) for a, b in itertools.pairwise(edges[1:])]
    work(edges[0], edges[1])
    for f in futures:
        f.result()


def _conv1_kernel():
    from instantft.engine.kernels import conv1_relu_pool

    return conv1_relu_pool


@torch.no_grad()
def base_rows_into(
    base: LeNet5,
    images: torch.Tensor,
    out: torch.Tensor,
    use_numba: bool,
    ready: Callable[[int, int], None] | None = None,
) -> None:
    """Write the cache rows of ``images`` (N, C, H, W) into ``out`` (N, width) float32, calling
    ``ready(lo, hi)`` after each pass of the torch layers has finished rows lo..hi-1."""
    sizes = [*base.layer_input_sizes()[1:], base.config.num_classes]
    bounds = np.cumsum([0, *sizes]).tolist()
    if out.shape != (len(images), bounds[-1]):
        raise ValueError(f"out must be ({len(images)}, {bounds[-1]}), got {tuple(out.shape)}")
    conv1 = base.conv1
    c1 = conv1.out_channels
    s1 = round((sizes[0] / c1) ** 0.5)
    kernel = _conv1_kernel() if use_numba and conv1.kernel_size == (5, 5) and c1 % 2 == 0 else None
    if kernel is not None:
        w1 = conv1.weight.detach().contiguous().numpy()
        assert conv1.bias is not None  # LeNet5's conv1 has a bias
        b1 = conv1.bias.detach().contiguous().numpy()
    if kernel is not None:  # conv1 for all rows first, on every core, before torch's threads wake up
        x1_all = torch.empty(len(images), c1, s1, s1)
        xn, x1n, pad = images.contiguous().numpy(), x1_all.numpy(), conv1.padding[0]
        split_rows(len(images), lambda a, b: kernel(xn[a:b], w1, b1, pad, x1n[a:b]))
    for lo in range(0, len(images), TORCH_CHUNK):
        rows = out[lo : lo + TORCH_CHUNK]
        x1 = x1_all[lo : lo + len(rows)] if kernel is not None else pool2x2(F.relu(conv1(images[lo : lo + len(rows)])))
        x2 = pool2x2(F.relu_(base.conv2(x1))).flatten(1)
        x3 = F.relu_(base.fc1(x2))
        x4 = F.relu_(base.fc2(x3))
        for t, a, b in ((x1.flatten(1), 0, 1), (x2, 1, 2), (x3, 2, 3), (x4, 3, 4), (base.fc3(x4), 4, 5)):
            rows[:, bounds[a] : bounds[b]] = t
        if ready is not None:
            ready(lo, lo + len(rows))
