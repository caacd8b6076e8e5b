"""Which counting conventions reproduce the paper's backward FLOPs and memory columns?

The paper prints the backward FLOPs and memory of Table 1 without saying how they were counted.
This module scores every combination of the plausible choices in :class:`Convention` (FLOPs per
MAC of the weight and input gradients; bias, ReLU, pool and loss-gradient ops; which adapter
input gradients count; whether the input image, pre-pool tensors, pre-ReLU copies, pool indices,
the logits' gradient and adapter hiddens are held) by how many of the paper's 12 cells per column
(6 methods × 2 networks, rank 4) it reproduces at printed precision. Run
``python -m instantft.analysis.conventions`` to see the ranking.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Literal

from instantft.analysis.costs import (
    DEFAULT,
    Convention,
    Layer,
    Plan,
    backward_flops,
    describe,
    memory_values,
    method_plan,
    network,
)
from instantft.analysis.paper import PAPER_RANK, PAPER_TABLE1, printed_flops, printed_memory

Column = Literal["backward", "memory"]

#: the alternatives tried for each field (the first value of each is not necessarily the default)
OPTIONS: dict[Column, dict[str, tuple[Any, ...]]] = {
    "backward": {
        "weight_grad_flops_per_mac": (1, 2),
        "input_grad_flops_per_mac": (1, 2),
        "bias_grad_flops": (False, True),
        "relu_backward_flops": (False, True),
        "pool_backward_flops": (0, 1, 3),
        "loss_grad_flops": (0, 1, 2),
        "adapter_input_grads": ("required", "layer-order", "always"),
        "merge_adds": (False, True),
    },
    "memory": {
        "count_input": (False, True),
        "count_pre_pool": (False, True),
        "separate_pre_relu": (False, True),
        "pool_indices": (False, True),
        "activation_grads": (False, True),
        "logits_grad": (False, True),
        "adapter_hidden": (False, True),
    },
}


@dataclass(frozen=True)
class Scored:
    convention: Convention
    matched: int  # paper cells reproduced at printed precision
    cells: int


def _networks() -> dict[str, tuple[list[Layer], dict[str, Plan]]]:
    out = {}
    for dataset, rows in PAPER_TABLE1.items():
        model = network(dataset)
        layers = describe(model)
        out[dataset] = (layers, {m: method_plan(model, layers, m, PAPER_RANK)[1] for m in rows})
    return out


def _matched(column: Column, conv: Convention, nets: dict[str, tuple[list[Layer], dict[str, Plan]]]) -> int:
    hits = 0
    for dataset, (layers, plans) in nets.items():
        for method, plan in plans.items():
            paper = PAPER_TABLE1[dataset][method]
            if column == "backward":
                hits += printed_flops(backward_flops(layers, plan, conv)) == printed_flops(paper.backward_flops)
            else:
                nbytes = sum(memory_values(layers, plan, conv).values()) * conv.bytes_per_value
                hits += printed_memory(nbytes) == printed_memory(paper.memory_bytes)
    return hits


def search(column: Column) -> list[Scored]:
    """Every combination of :data:`OPTIONS` for a column, best first (other fields at their defaults)."""
    nets = _networks()
    cells = sum(len(plans) for _, plans in nets.values())
    fields = OPTIONS[column]
    scored = []
    for values in itertools.product(*fields.values()):
        conv = replace(DEFAULT, **dict(zip(fields, values, strict=True)))
        scored.append(Scored(conv, _matched(column, conv, nets), cells))
    return sorted(scored, key=lambda s: -s.matched)


def describe_difference(conv: Convention, column: Column) -> str:
    """The fields of ``conv`` that differ from the adopted default."""
    diffs = [f"{f}={getattr(conv, f)!r}" for f in OPTIONS[column] if getattr(conv, f) != getattr(DEFAULT, f)]
    return ", ".join(diffs) or "(the adopted default)"


def summary(top: int = 8) -> str:
    lines = []
    for column in ("backward", "memory"):
        ranked = search(column)
        full = [s for s in ranked if s.matched == s.cells]
        lines.append(
            f"{column}: {len(ranked)} conventions tried, {len(full)} reproduce all {ranked[0].cells} paper cells"
        )
        for s in ranked[:top]:
            lines.append(f"  {s.matched:2d}/{s.cells}  {describe_difference(s.convention, column)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary())
