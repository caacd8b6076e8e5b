"""Aggregating low-rank adapters from a fleet, and screening the updates first.

Adapter k of a LoRA or skip method is a pair (A_k: r × d, B_k: C × r) whose effect is the product
ΔW_k = B_k·A_k. Averaging the factors is not averaging the effect: mean(B)·mean(A) ≠ mean(B·A).
Three ways, every one weighted by each client's sample count n_i (w_i = n_i / Σ n):

- ``fedavg``: Σ w_i A_i and Σ w_i B_i (FedAvg of the factors; inexact, the product gains cross
  terms B_i·A_j between clients);
- ``svd``: the exact mean of the products Σ w_i B_i·A_i, refactorised to rank r by a truncated
  SVD U S Vᵀ: A = c·V_rᵀ, B = U_r S_r / c, with c the clients' mean row norm of A (so A keeps
  the scale SGD was tuned for). Exact up to the truncation: the mean of K rank-r products has
  rank up to K·r;
- ``b-only``: the clients train B with a shared frozen A (:attr:`instantft.settings.Adapters.train_a`
  off, every client seeded alike) and send only B: Σ w_i B_i·A = (Σ w_i B_i)·A, exact.

Before any of them, :func:`screen` refuses an update that holds a NaN or an infinity and clips an
update whose distance from the global adapters exceeds ``clip`` × the median distance of the round
(norm bounding, Sun et al. 2019, "Can you really backdoor federated learning?"): an honest fleet
is left as it is, a client sending 10⁶ × the others' update moves the mean no more than an honest
one can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

Aggregation = Literal["fedavg", "svd", "b-only"]
AGGREGATIONS: tuple[Aggregation, ...] = ("fedavg", "svd", "b-only")


@dataclass
class Update:
    """One client's trained adapters, its sample count and a name for the log."""

    client: str
    arrays: dict[str, torch.Tensor]
    samples: int


@dataclass
class Screened:
    """What :func:`screen` kept (clipped or not) and what it refused, each with the reason."""

    kept: list[Update]
    refused: dict[str, str] = field(default_factory=dict)
    clipped: dict[str, float] = field(default_factory=dict)  # client -> the factor its update was scaled by


def _distance(update: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((update[k].double() - base[k].double()).square().sum()) for k in base))


def screen(updates: list[Update], base: dict[str, torch.Tensor], clip: float = 5.0) -> Screened:
    """Refuse non-finite or misshapen updates; clip the rest to ``clip`` × the median distance from ``base``."""
    out = Screened(kept=[])
    for u in updates:
        if set(u.arrays) != set(base):
            out.refused[u.client] = f"tensors {sorted(u.arrays)} are not the global adapters' {sorted(base)}"
        elif any(u.arrays[k].shape != base[k].shape for k in base):
            out.refused[u.client] = "a tensor's shape differs from the global adapters'"
        elif not all(bool(torch.isfinite(t).all()) for t in u.arrays.values()):
            out.refused[u.client] = "non-finite values (NaN or infinity) in its adapters"
        elif u.samples <= 0:
            out.refused[u.client] = f"a sample count of {u.samples}"
        else:
            out.kept.append(u)
    if len(out.kept) < 2 or clip <= 0:
        return out
    distances = [_distance(u.arrays, base) for u in out.kept]
    bound = clip * float(torch.tensor(distances).median())
    for i, (u, d) in enumerate(zip(out.kept, distances, strict=True)):
        if d > bound and d > 0:
            s = bound / d
            arrays = {k: base[k] + (u.arrays[k] - base[k]) * s for k in base}
            out.kept[i] = Update(u.client, arrays, u.samples)
            out.clipped[u.client] = s
    return out


def pairs(names: list[str]) -> list[tuple[str, str]]:
    """The (A, B) tensor names of each adapter: ``x.A`` with ``x.B``."""
    return [(n, n[:-1] + "B") for n in names if n.endswith(".A") and n[:-1] + "B" in names]


def weights(updates: list[Update]) -> list[float]:
    total = sum(u.samples for u in updates)
    return [u.samples / total for u in updates]


def fedavg(updates: list[Update]) -> dict[str, torch.Tensor]:
    """Σ w_i T_i for every tensor T (the exact mean when only B is trained)."""
    w = weights(updates)
    names = list(updates[0].arrays)
    return {k: sum((wi * u.arrays[k].double() for wi, u in zip(w, updates, strict=True)),
                   torch.zeros(())).float() for k in names}  # fmt: skip


def svd_product(updates: list[Update]) -> dict[str, torch.Tensor]:
    """The exact weighted mean of every adapter's product B·A, refactorised to its rank by truncated SVD;
    tensors that are not part of an (A, B) pair are averaged."""
    w = weights(updates)
    out = fedavg(updates)
    for a_name, b_name in pairs(list(updates[0].arrays)):
        r = updates[0].arrays[a_name].shape[0]
        delta = sum(
            wi * (u.arrays[b_name].double() @ u.arrays[a_name].double()) for wi, u in zip(w, updates, strict=True)
        )
        assert isinstance(delta, torch.Tensor)
        u_, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(r, len(s))
        scale = sum(wi * float(u.arrays[a_name].double().norm(dim=1).mean()) for wi, u in zip(w, updates, strict=True))
        scale = scale if scale > 0 else 1.0
        a = torch.zeros_like(updates[0].arrays[a_name], dtype=torch.float64)
        b = torch.zeros_like(updates[0].arrays[b_name], dtype=torch.float64)
        a[:k] = scale * vh[:k]
        b[:, :k] = u_[:, :k] * s[:k] / scale
        out[a_name], out[b_name] = a.float(), b.float()
    return out


def aggregate(updates: list[Update], how: Aggregation) -> dict[str, torch.Tensor]:
    """The global adapters from the (screened) client updates."""
    if not updates:
        raise ValueError("no update to aggregate")
    if how == "svd":
        return svd_product(updates)
    return fedavg(updates)  # fedavg, and b-only (whose updates hold only B: the exact mean)


def product_error(
    updates: list[Update], merged: dict[str, torch.Tensor], shared_a: dict[str, torch.Tensor] | None = None
) -> float:
    """‖B·A of ``merged`` − Σ w_i B_i·A_i‖ / ‖Σ w_i B_i·A_i‖ over all adapters (0: exact). ``shared_a``
    gives the frozen A of a b-only fleet, whose updates carry only B."""
    w = weights(updates)
    num = den = 0.0
    names = list(updates[0].arrays)
    b_names = [n for n in names if n.endswith(".B")]
    for b_name in b_names:
        a_name = b_name[:-1] + "A"

        def a_of(arrays: dict[str, torch.Tensor], a_name: str = a_name) -> torch.Tensor:
            return (arrays[a_name] if a_name in arrays else shared_a[a_name]).double()  # type: ignore[index]

        exact = sum(wi * (u.arrays[b_name].double() @ a_of(u.arrays)) for wi, u in zip(w, updates, strict=True))
        got = merged[b_name].double() @ a_of(merged)
        num += float((got - exact).square().sum())
        den += float(torch.as_tensor(exact).square().sum())
    return math.sqrt(num / den) if den > 0 else 0.0
