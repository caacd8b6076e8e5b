"""The pure-torch fast path, used when numba is not importable: the same step as
:mod:`instantft.engine.kernels`, with hand-written gradients, every buffer allocated once and
``out=`` ops, so a step is ~25 ATen calls and no autograd, optimiser or Python-side allocation.
"""

from __future__ import annotations

import torch

from instantft import nf4
from instantft.engine.layout import Layout


class TorchTrainer:
    """Holds the buffers of one run; :meth:`run` trains steps ``first..last-1`` in place."""

    def __init__(self, layout: Layout, images: torch.Tensor, labels: torch.Tensor, nb_max: int) -> None:
        self.layout = layout
        self.images = images  # (N, d0)
        self.labels = labels
        R, K, C = layout.padded_rank, len(layout.sizes), layout.num_classes
        self.x = torch.empty(nb_max, layout.d_image)
        self.cached = torch.empty(nb_max, layout.cache_width)
        self.h = torch.empty(nb_max, K * R)
        self.y = torch.empty(nb_max, C)
        self.gB = torch.empty(nb_max, K * R)
        self.dA = torch.empty(R, layout.total_inputs)
        self.dB = torch.empty(C, K * R)
        self.m = torch.empty(nb_max, 1)
        self.s = torch.empty(nb_max, 1)
        self.picked = torch.empty(nb_max, 1)

    def _inputs(self, k: int, nb: int) -> torch.Tensor:
        src, off, n = self.layout.sources[k]
        buf = self.x if src == "image" else self.cached
        return buf[:nb, off : off + n]

    def step(
        self, nb: int, rows: torch.Tensor, A: torch.Tensor, Bflat: torch.Tensor, lr: float, scale: float
    ) -> torch.Tensor:
        """One SGD step on the samples already gathered into the buffers; returns the loss (0-d)."""
        L = self.layout
        R, K = L.padded_rank, len(L.sizes)
        h, y, gB = self.h[:nb], self.y[:nb], self.gB[:nb]
        for k in range(K):  # h_k = x_{k-1} A_kᵀ
            cols = L.columns[k]
            torch.mm(self._inputs(k, nb), A[:, cols[0] : cols[1]].t(), out=h[:, k * R : (k + 1) * R])
        torch.addmm(self.cached[:nb, L.logit_offset :], h, Bflat.t(), alpha=scale, out=y)
        m, s, picked = self.m[:nb], self.s[:nb], self.picked[:nb]
        torch.amax(y, 1, keepdim=True, out=m)
        y.sub_(m)
        labels = self.labels[rows].unsqueeze(1)
        torch.gather(y, 1, labels, out=picked)  # y_label − m
        torch.sum(y.exp_(), 1, keepdim=True, out=s)
        loss = (s.log() - picked).mean()  # log Σ exp(y − m) + m − y_label
        y.div_(s)  # softmax
        y.scatter_add_(1, labels, torch.full_like(picked, -1.0))
        y.div_(nb)  # g
        torch.mm(y, Bflat, out=gB)  # g B_k, all k side by side
        torch.mm(y.t(), h, out=self.dB)
        for k in range(K):
            cols = L.columns[k]
            torch.mm(gB[:, k * R : (k + 1) * R].t(), self._inputs(k, nb), out=self.dA[:, cols[0] : cols[1]])
        Bflat.sub_(self.dB, alpha=lr * scale)
        A.sub_(self.dA, alpha=lr * scale)
        return loss

    def gather_fp32(self, rows: torch.Tensor, slots: torch.Tensor, cache_rows: torch.Tensor) -> None:
        nb = len(rows)
        torch.index_select(self.images, 0, rows, out=self.x[:nb])
        torch.index_select(cache_rows, 0, slots, out=self.cached[:nb])

    def gather_nf4(self, rows: torch.Tensor, slots: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor) -> None:
        nb = len(rows)
        torch.index_select(self.images, 0, rows, out=self.x[:nb])
        q = nf4.NF4Tensor(codes[slots], absmax[slots], self.layout.cache_width)
        self.cached[:nb] = nf4.dequantize(q)
