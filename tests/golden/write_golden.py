"""Write the golden dump the C core's test program (csrc/test_core.c) checks itself against, in
the manner of llm.c's ``train_gpt2.py`` → ``test_gpt2.c``: every number in it comes from the
Python reference (the backbone's own torch forward, :mod:`instantft.nf4`, the reference
:class:`instantft.adapters.SkipAdapters` loop), never from the C code.

The case is small and covers the generic paths: a chain with a padded 3×3 conv, BatchNorm folded
at conversion, a 3×3/2 pool with padding, a strided conv (im2col), flatten and two linears; four
taps (the image, two cached maps, a hidden vector), rank 3 (padded to 4), five classes, a row of
189 values (NF4: three blocks, the last one padded), batches of 7 with a short last one.

Format: :func:`instantft.engine.cengine.write_dump` (named arrays in a safetensors file, read in C
by the device program's reader). ``python tests/golden/write_golden.py tests/golden/core_small.safetensors``
regenerates it.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instantft import nf4
from instantft.adapters import SkipAdapters
from instantft.backbones import Backbone
from instantft.engine import cengine
from instantft.engine import chain as chain_mod
from instantft.engine.layout import Layout
from instantft.training import FineTuneConfig

N, IN_SHAPE, RANK, BATCH, EPOCHS, LR, SCALE = 23, (1, 12, 12), 3, 7, 2, 0.2, 1.5


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _packed(layout: Layout, A: list[torch.Tensor], B: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    a, b = layout.pack(A, B)
    return a.numpy().copy(), b.numpy().copy()


def _train(
    adapters: SkipAdapters,
    xs_all: list[torch.Tensor],
    logits: torch.Tensor,
    labels: torch.Tensor,
    batches: list[torch.Tensor],
) -> list[float]:
    """The reference loop: one SkipAdapters.sgd_step per batch."""
    return [adapters.sgd_step([x[rows] for x in xs_all], logits[rows], labels[rows], LR) for rows in batches]


def build() -> dict[str, np.ndarray]:
    bb = Backbone(model(), example=IN_SHAPE)
    chain = chain_mod.chain_for(bb, check=False)
    if chain is None:
        raise RuntimeError("the golden model must convert to a chain")
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(N, *IN_SHAPE, generator=gen).sub_(0.3).clamp_(min=0)
    labels = torch.randint(0, 5, (N,), generator=gen)
    taps, logits = bb.trace(images)
    cached = [t for t, tap in zip(taps, bb.taps, strict=True) if not tap.is_model_input]
    rows = torch.cat([*cached, logits], dim=1)
    q = nf4.quantize(rows)
    out = cengine.chain_arrays(chain)  # BN folded: the weights the chain runs with
    out["images"] = images.reshape(N, -1).numpy()
    out["labels"] = labels.numpy().astype(np.int64)
    out["rows"] = rows.numpy()
    out["rows_codes"], out["rows_absmax"] = q.codes.numpy(), q.absmax.numpy()
    # encoder corner cases: signs, zeros, -0.0, an all-zero block, exact levels, a short last block
    special = torch.randn(3, 150, generator=gen)
    special[1, :64] = 0.0
    special[1, 64:70] = -0.0
    special[2, :16] = nf4.NF4_LEVELS * 3.0
    qs = nf4.quantize(special)
    out["nf4_in"], out["nf4_codes"], out["nf4_absmax"] = special.numpy(), qs.codes.numpy(), qs.absmax.numpy()
    out["nf4_decoded"] = nf4.dequantize(qs).numpy()
    # adapters: the layout, initial A (Gaussian), a non-zero B so the first step's dA is not 0
    layout = Layout.for_backbone(bb, RANK)
    config = FineTuneConfig(rank=RANK, scale=SCALE, lr=LR, batch_size=BATCH)
    adapters = SkipAdapters(bb.sizes, bb.num_classes, config, torch.Generator().manual_seed(2))
    for b in adapters.B:
        b.normal_(0.0, 0.3, generator=gen)
    out["seg"] = layout.segments()
    out["A0"], out["B0"] = _packed(layout, adapters.A, adapters.B)
    out["lr_scale"] = np.array([LR, SCALE], np.float32)
    order = torch.cat([torch.randperm(N, generator=gen) for _ in range(EPOCHS)])
    edges = [0]
    for _ in range(EPOCHS):
        for s in range(0, N, BATCH):
            edges.append(edges[-1] + min(BATCH, N - s))
    out["order"], out["offsets"] = order.numpy().astype(np.int64), np.array(edges, np.int64)
    batches = [order[a:b] for a, b in itertools.pairwise(edges)]
    # the first step's gradients (hand-written, as the reference computes them)
    xs0 = [t[batches[0]] for t in taps]
    delta, hs = adapters.delta(xs0)
    g, _ = SkipAdapters.output_grad(logits[batches[0]] + delta, labels[batches[0]])
    dA, dB = adapters.grads(xs0, hs, g)
    out["dA0"], out["dB0"] = _packed(layout, dA, dB)
    start = [t.clone() for t in (*adapters.A, *adapters.B)]
    # fp32 cache: the reference loop over the traced activations
    losses = _train(adapters, taps, logits, labels, batches)
    out["losses"] = np.array(losses, np.float64)
    out["A_fp32"], out["B_fp32"] = _packed(layout, adapters.A, adapters.B)
    with torch.no_grad():
        out["logits_adapted"] = (logits + adapters.delta(taps)[0]).numpy()
    # NF4 cache: the same loop over the dequantised rows
    K = len(adapters.A)
    for t, s in zip((*adapters.A, *adapters.B), start, strict=True):
        t.copy_(s)
    deq = nf4.dequantize(q)
    bounds = np.cumsum([0, *bb.cache_sizes]).tolist()
    parts = [deq[:, bounds[i] : bounds[i + 1]] for i in range(len(bb.cache_sizes))]
    it = iter(parts[:-1])
    xs_nf4 = [taps[k] if bb.taps[k].is_model_input else next(it) for k in range(K)]
    out["losses_nf4"] = np.array(_train(adapters, xs_nf4, parts[-1], labels, batches), np.float64)
    out["A_nf4"], out["B_nf4"] = _packed(layout, adapters.A, adapters.B)
    return out


write, read = cengine.write_dump, cengine.read_dump


if __name__ == "__main__":
    write(Path(sys.argv[1]), build())
