"""The pure-torch fast path, used when numba is not importable: the same step as
:mod:`instantft.engine.kernels`, with hand-written gradients, every buffer and every view of it
made once, and ``out=`` ops, so a step is ~25 ATen calls and no autograd, optimiser or
Python-side allocation (NF4 dequantisation aside).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instantft import nf4
from instantft.engine.layout import Layout


@dataclass
class _Views:
    """The slices one step of ``nb`` samples works on, cut once per batch size."""

    x: torch.Tensor  # (nb, d0) images
    cached: torch.Tensor  # (nb, cache width) cache rows
    inputs: list[torch.Tensor]  # x_{k-1} of each adapter: slices of x / cached
    h_k: list[torch.Tensor]  # (nb, R) slices of h
    gB_k: list[torch.Tensor]  # (nb, R) slices of gB
    h: torch.Tensor
    gB: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    m: torch.Tensor
    s: torch.Tensor
    picked: torch.Tensor


class TorchTrainer:
    """The buffers of one run. ``A`` (R, D) and ``Bflat`` (C, K·R) are trained in place."""

    def __init__(
        self,
        layout: Layout,
        images: torch.Tensor,
        labels: torch.Tensor,
        A: torch.Tensor,
        Bflat: torch.Tensor,
        nb_max: int,
        lr: float,
        scale: float,
    ) -> None:
        self.layout, self.images, self.labels = layout, images, labels
        self.A, self.Bflat, self.lr, self.scale = A, Bflat, lr, scale
        R, K, C = layout.padded_rank, len(layout.sizes), layout.num_classes
        self.x = torch.empty(nb_max, layout.d_image)
        self.cached = torch.empty(nb_max, layout.cache_width)
        self.h = torch.empty(nb_max, K * R)
        self.gB = torch.empty(nb_max, K * R)
        self.y = torch.empty(nb_max, C)
        self.stats = torch.empty(3, nb_max, 1)
        self.dA = torch.empty(R, layout.total_inputs)
        self.dB = torch.empty(C, K * R)
        cols = layout.columns
        self.A_k = [A[:, a:b] for a, b in cols]
        self.dA_k = [self.dA[:, a:b] for a, b in cols]
        self.minus_one = torch.full((nb_max, 1), -1.0)
        self._views: dict[int, _Views] = {}

    def views(self, nb: int) -> _Views:
        if nb not in self._views:
            R = self.layout.padded_rank
            x, cached = self.x[:nb], self.cached[:nb]
            inputs = [(x if src == "image" else cached)[:, off : off + n] for src, off, n in self.layout.sources]
            h, gB = self.h[:nb], self.gB[:nb]
            self._views[nb] = _Views(
                x=x,
                cached=cached,
                inputs=inputs,
                h_k=[h[:, k * R : (k + 1) * R] for k in range(len(inputs))],
                gB_k=[gB[:, k * R : (k + 1) * R] for k in range(len(inputs))],
                h=h,
                gB=gB,
                y=self.y[:nb],
                logits=cached[:, self.layout.logit_offset :],
                m=self.stats[0, :nb],
                s=self.stats[1, :nb],
                picked=self.stats[2, :nb],
            )
        return self._views[nb]

    def gather_fp32(self, rows: torch.Tensor, slots: torch.Tensor, cache_rows: torch.Tensor) -> _Views:
        v = self.views(len(rows))
        torch.index_select(self.images, 0, rows, out=v.x)
        torch.index_select(cache_rows, 0, slots, out=v.cached)
        return v

    def gather_nf4(self, rows: torch.Tensor, slots: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor) -> _Views:
        v = self.views(len(rows))
        torch.index_select(self.images, 0, rows, out=v.x)
        v.cached.copy_(nf4.dequantize(nf4.NF4Tensor(codes[slots], absmax[slots], self.layout.cache_width)))
        return v

    def step(self, v: _Views, rows: torch.Tensor) -> float:
        """One SGD step on the gathered samples; returns the loss before the update."""
        nb = v.x.shape[0]
        for x, a, h in zip(v.inputs, self.A_k, v.h_k, strict=True):  # h_k = x_{k-1} A_kᵀ
            torch.mm(x, a.t(), out=h)
        torch.addmm(v.logits, v.h, self.Bflat.t(), alpha=self.scale, out=v.y)  # y = f(x) + scale·Σ B_k h_k
        torch.amax(v.y, 1, keepdim=True, out=v.m)
        v.y.sub_(v.m)
        labels = self.labels[rows].unsqueeze(1)
        torch.gather(v.y, 1, labels, out=v.picked)  # y_label − m
        torch.sum(v.y.exp_(), 1, keepdim=True, out=v.s)
        loss = float((v.s.log() - v.picked).mean())  # log Σ exp(y − m) + m − y_label
        v.y.div_(v.s).scatter_add_(1, labels, self.minus_one[:nb]).div_(nb)  # g = (softmax − onehot)/nb
        torch.mm(v.y, self.Bflat, out=v.gB)  # g B_k for every k, with B from before the step
        torch.mm(v.y.t(), v.h, out=self.dB)
        for x, g, da in zip(v.inputs, v.gB_k, self.dA_k, strict=True):
            torch.mm(g.t(), x, out=da)
        self.Bflat.sub_(self.dB, alpha=self.lr * self.scale)
        self.A.sub_(self.dA, alpha=self.lr * self.scale)
        return loss
