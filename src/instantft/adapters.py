"""The adapters every LoRA-family method trains, in one place.

**LoRA** (LoRA-All, LoRA-Last; Hu et al. 2021): a low-rank update ΔW = B·A on a frozen layer,

    y = W x + b + scale · B (A x)        A: r × d_in (Gaussian), B: d_out × r (zero)

For a conv layer the adapter is a dense map from the flattened layer input to the flattened conv
output (the paper's formulation, which gives its Table 1 counts: conv1 r·(784 + 4704)). PEFT's
conv LoRA is kernel-shaped instead (A a conv with the layer's kernel and r output channels, B a
1×1 conv): far fewer parameters on wide layers, translation-equivariant, and not what the paper
counts.

**Skip adapters** (Skip-LoRA, Skip2-LoRA, InstantFT): adapter k maps the flattened tap x_k
straight to the logits,

    y = f(x) + scale · Σ_k B_k A_k x_k       A_k: r × d_k (Gaussian), B_k: C × r (zero)

so the loss gradient reaches every adapter without passing through the frozen network. With
g = (softmax(y) − onehot)/batch and h_k = A_k x_k:

    ∂B_k = scale · gᵀ h_k        ∂A_k = scale · (g B_k)ᵀ x_k

written by hand (no autograd). B = 0 makes both kinds a no-op at step 0. With ``train_a`` off
A keeps its seeded init and only B is trained: adapters trained from the same seed then share A,
so their mean is the mean of their products B·A (:mod:`instantft.fleet`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from instantft.training import FineTuneConfig


def init_lora_a(a: torch.Tensor, config: FineTuneConfig, generator: torch.Generator) -> None:
    """Initialise a LoRA A matrix (rank × d_in) in place; B stays zero so ΔW = 0 at step 0."""
    with torch.no_grad():
        if config.init == "gaussian":
            a.normal_(0.0, config.init_std, generator=generator)
        else:  # PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)) -> U(-1/sqrt(d_in), 1/sqrt(d_in))
            bound = 1.0 / math.sqrt(a.shape[1])
            a.uniform_(-bound, bound, generator=generator)


class LoRALayer(nn.Module):
    """Wrap a frozen ``nn.Linear`` or ``nn.Conv2d`` with a dense low-rank update."""

    def __init__(self, layer: nn.Module, d_in: int, d_out: int, config: FineTuneConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.layer = layer
        self.scale = config.scale
        self.A = nn.Parameter(torch.empty(config.rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, config.rank))
        init_lora_a(self.A, config, gen)
        self.A.requires_grad_(config.train_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        delta = (x.flatten(1) @ self.A.t()) @ self.B.t()
        return y + self.scale * delta.view_as(y)


class SkipAdapters:
    """One skip adapter per tap (k = 1..K) and their hand-written forward, backward and SGD step.
    Tensor names ``skip{k}.A`` / ``skip{k}.B`` follow the tap order."""

    def __init__(self, in_sizes: list[int], num_classes: int, config: FineTuneConfig, gen: torch.Generator) -> None:
        self.scale = config.scale
        self.train_a = config.train_a
        self.A = [torch.empty(config.rank, d) for d in in_sizes]
        self.B = [torch.zeros(num_classes, config.rank) for _ in in_sizes]
        for a in self.A:
            init_lora_a(a, config, gen)

    def state(self) -> dict[str, torch.Tensor]:
        """The trained tensors by name: every A and B, or only the Bs when A is not trained."""
        out: dict[str, torch.Tensor] = {}
        for k, (a, b) in enumerate(zip(self.A, self.B, strict=True), start=1):
            if self.train_a:
                out[f"skip{k}.A"] = a
            out[f"skip{k}.B"] = b
        return out

    @staticmethod
    def names(count: int) -> list[str]:
        return [f"skip{k}.{m}" for k in range(1, count + 1) for m in ("A", "B")]

    def delta(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """scale·Σ B_k A_k x_k and the rank-r projections h_k = A_k x_k (kept for the backward)."""
        hs = [x @ a.t() for x, a in zip(xs, self.A, strict=True)]
        out = hs[0] @ self.B[0].t()
        for h, b in zip(hs[1:], self.B[1:], strict=True):
            out.addmm_(h, b.t())
        return out.mul_(self.scale), hs

    @staticmethod
    def output_grad(y: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """g = (softmax(y) − onehot)/batch and the mean cross-entropy."""
        m = y.max(1, keepdim=True).values
        e = (y - m).exp_()
        s = e.sum(1, keepdim=True)
        rows = torch.arange(len(labels))
        loss = float((s.log().squeeze(1) + m.squeeze(1) - y[rows, labels]).mean())
        g = e.div_(s)
        g[rows, labels] -= 1.0
        return g.div_(len(labels)), loss

    def grads(
        self, xs: list[torch.Tensor], hs: list[torch.Tensor], g: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(∂A_k, ∂B_k) for k = 1..K from the output gradient g."""
        dB = [self.scale * (g.t() @ h) for h in hs]
        dA = [self.scale * ((g @ b).t() @ x) for b, x in zip(self.B, xs, strict=True)]
        return dA, dB

    def sgd_step(self, xs: list[torch.Tensor], base_logits: torch.Tensor, labels: torch.Tensor, lr: float) -> float:
        """One SGD step on a batch; returns the loss before the update."""
        delta, hs = self.delta(xs)
        g, loss = self.output_grad(base_logits + delta, labels)
        if not self.train_a:  # only ∂B: the costly ∂A (r × d_k per tap) is never formed
            for h, b in zip(hs, self.B, strict=True):
                b.sub_(g.t() @ h, alpha=lr * self.scale)
            return loss
        dA, dB = self.grads(xs, hs, g)
        for a, b, da, db in zip(self.A, self.B, dA, dB, strict=True):
            if self.train_a:
                a.sub_(da, alpha=lr)
            b.sub_(db, alpha=lr)
        return loss
