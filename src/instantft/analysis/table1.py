"""``instantft table1``: the paper's Table 1 recomputed from the model, beside the printed values.

Each row is one registered method on the MNIST or SVHN network at a rank: trainable parameters,
forward and backward FLOPs and memory of one sample (:mod:`instantft.analysis.costs`), the
paper's value where Table 1 has one (:mod:`instantft.analysis.paper`), and whether they agree at
the paper's printed precision. Skip-LoRA and Skip2-LoRA train InstantFT's adapters, so they share
its counts; the paper prints no row for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from instantft.analysis.paper import PAPER_NAMES, PAPER_RANK, paper_row, printed_flops, printed_memory
from instantft.errors import InstantFTError

if TYPE_CHECKING:
    from rich.console import Console

#: the networks of Table 1's two column groups
DATASETS = ("mnist", "svhn")
#: rows in the paper's order, with the two methods between LoRA-Last and InstantFT inserted
METHODS = ("ft-all", "ft-last", "ft-bias", "lora-all", "lora-last", "skip-lora", "skip2-lora", "instantft")
#: JSON keys of the four compared quantities
QUANTITIES = ("trainable_params", "forward_flops", "backward_flops", "memory_bytes")

CONVENTIONS = """\
Conventions: one sample (batch of one), fp32 = 4 B a value, 1 KB = 1000 B,
everything counted from the model's modules and each method's trainable
tensors (instantft.analysis.costs).
- params: what method.trainable() holds; an adapter A (r x d_in), B (d_out x r)
  has r(d_in + d_out).
- forward FLOPs: 2 per MAC + 1 per bias element + 1 per ReLU element + 3
  comparisons per 2x2 max-pool window; an adapter adds 2r(d_in + d_out).
  Adding an adapter's output to the layer's is not counted.
- backward FLOPs: 2 per MAC for weight gradients and for input gradients, 1 per
  bias-gradient element, 1 per ReLU element passed through; max-pool routing,
  the loss gradient and the SGD update cost nothing. An adapter costs 2r*d_out
  (dB) + 2r*d_out (B^T g) + 2r*d_in (dA) + 2r*d_in (its input gradient).
  Input gradients are counted at every layer after the first one holding a
  trainable tensor (layer-order rule). For FT-* and LoRA-* that is exactly
  what autograd computes; for Skip-LoRA/Skip2-LoRA/InstantFT it adds
  A_k^T (B_k^T g) for k = 2..5, which nothing uses. The paper counts them (its
  20.9x and 14.1-40.6x backward ratios use them), so backward_flops does too;
  backward_flops_required leaves them out.
- memory: weights and adapters + one gradient per trainable value + forward
  activations (the input, each layer's output after an in-place ReLU, each
  pooled output, each adapter's h = A x) + where the method backpropagates
  through the network, the gradient of each activation on that path and one
  4-byte argmax index per pooled value passed through + the logits' gradient
  and each adapter's dh. The Forward Cache of Skip2-LoRA/InstantFT grows with
  the fine-tuning set and is not in this per-sample figure.
- fit: python -m instantft.analysis.conventions scores the alternatives tried
  (FLOPs per MAC; bias, ReLU, pool and loss-gradient ops; which adapter input
  gradients count; the input image, pre-pool and pre-ReLU copies, pool
  indices, activation and logits gradients, adapter hiddens). Only this
  backward convention (up to the loss gradient's <= 20 FLOPs, below the
  printed precision) and only this memory convention reproduce all 12 cells of
  their column. The pool indices are our reading of 1,576 values (6.3 KB) the
  paper does not itemise; without them FT-All, FT-Bias and LoRA-All miss it."""


def table1_rows(dataset: str, rank: int = PAPER_RANK) -> list[dict[str, Any]]:
    """Computed rows for one network (``mnist``, ``svhn``) or ``both``, with the paper's values."""
    from instantft.analysis.costs import costs, describe, method_plan, network

    datasets = DATASETS if dataset == "both" else (dataset,)
    if any(d not in DATASETS for d in datasets):
        raise InstantFTError(f"unknown --dataset {dataset!r}; valid: {', '.join(DATASETS)}, both")
    rows = []
    for ds in datasets:
        model = network(ds)
        layers = describe(model)
        for name in METHODS:
            method, plan = method_plan(model, layers, name, rank)
            c = costs(layers, plan)
            # Skip2-LoRA / InstantFT: a one-row Forward Cache tells its bytes per sample
            cache = method.new_cache(1) if method.cache_storage else None
            row: dict[str, Any] = {
                "dataset": ds,
                "network": model.config.name,
                "rank": rank,
                "method": name,
                "paper_name": PAPER_NAMES[name],
                "trainable_params": c.trainable_params,
                "forward_flops": c.forward_flops,
                "backward_flops": c.backward_flops,
                "backward_flops_required": c.backward_flops_required,
                "memory_bytes": c.memory_bytes,
                "memory_breakdown_bytes": c.memory,
                "cache_bytes_per_sample": cache.row_bytes if cache is not None else 0,
            }
            paper = paper_row(ds, name)
            # the paper's counts are at r = 4; those of methods without adapters do not depend on r
            if paper is not None and (rank == PAPER_RANK or not plan.adapters):
                row["paper_trainable_params"] = paper.trainable_params
                row["paper_forward_flops"] = paper.forward_flops
                row["paper_backward_flops"] = paper.backward_flops
                row["paper_memory_bytes"] = paper.memory_bytes
                row["matches_paper"] = {q: _printed(q, row[q]) == _printed(q, row[f"paper_{q}"]) for q in QUANTITIES}
            rows.append(row)
    return rows


def _printed(quantity: str, value: float) -> str:
    """A value at the paper's printed precision."""
    if quantity == "trainable_params":
        return f"{value:,}"
    return printed_memory(value) if quantity == "memory_bytes" else printed_flops(value)


def _difference(quantity: str, row: dict[str, Any]) -> str:
    """Ours minus the paper's, at the paper's precision; "0" when they print the same."""
    if f"paper_{quantity}" not in row:
        return ""
    ours, paper = row[quantity], row[f"paper_{quantity}"]
    if _printed(quantity, ours) == _printed(quantity, paper):
        return "0"
    if quantity == "trainable_params":
        return f"{ours - paper:+,}"
    if quantity == "memory_bytes":
        return f"{round(ours / 100) / 10 - paper / 1000:+.1f}KB"
    return f"{round(ours / 1000) / 1000 - paper / 1e6:+.3f}M"


def _cells(row: dict[str, Any], quantity: str) -> tuple[str, str, str]:
    paper = row.get(f"paper_{quantity}")
    return (
        _printed(quantity, row[quantity]),
        _printed(quantity, paper) if paper is not None else "-",
        _difference(quantity, row),
    )


def _title(rows: list[dict[str, Any]]) -> str:
    r = rows[0]
    return f"{r['dataset'].upper()} network ({r['network']}), rank {r['rank']}, per sample"


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """What a reader needs beside the numbers: the unused adapter gradients and the cache."""
    notes = []
    if rows and rows[0]["rank"] != PAPER_RANK:
        notes.append(f"The paper's Table 1 is at r = {PAPER_RANK}: shown only for methods without adapters.")
    unused = [r for r in rows if r["backward_flops_required"] != r["backward_flops"]]
    if unused:
        required = ", ".join(
            f"{r['paper_name']} {printed_flops(r['backward_flops_required'])} ({r['backward_flops_required']:,})"
            for r in unused
        )
        notes.append(f"Backward FLOPs without the unused adapter input gradients: {required}.")
    cached = [r for r in rows if r["cache_bytes_per_sample"]]
    if cached:
        sizes = ", ".join(f"{r['paper_name']} {r['cache_bytes_per_sample']:,} B" for r in cached)
        notes.append(f"Forward Cache per fine-tuning sample, not in the memory column: {sizes}.")
    return notes


def table1_markdown(dataset: str, rank: int = PAPER_RANK, conventions: bool = True) -> str:
    """Table 1 as Markdown, ours beside the paper's with the difference, one table per network."""
    all_rows = table1_rows(dataset, rank)
    parts = []
    for ds in dict.fromkeys(r["dataset"] for r in all_rows):
        rows = [r for r in all_rows if r["dataset"] == ds]
        lines = [
            f"**{_title(rows)}**",
            "",
            "| method | params | paper | Δ | fwd FLOPs | paper | Δ | bwd FLOPs | paper | Δ | memory | paper | Δ |",
            "|---|" + "---:|" * 12,
        ]
        for r in rows:
            cells = [c for q in QUANTITIES for c in _cells(r, q)]
            lines.append(f"| {r['paper_name']} | " + " | ".join(cells) + " |")
        lines += ["", *(f"- {n}" for n in _notes(rows))]
        parts.append("\n".join(lines))
    if conventions:
        parts.append("```text\n" + CONVENTIONS + "\n```")
    return "\n\n".join(parts) + "\n"


def print_table1(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Rich tables, three lines a method (ours, paper, difference), then the conventions."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == ds]
        table = Table(title=_title(group))
        table.add_column("method")
        table.add_column("")
        for header in ("params", "forward FLOPs", "backward FLOPs", "memory"):
            table.add_column(header, justify="right")
        for r in group:
            cells = [_cells(r, q) for q in QUANTITIES]
            table.add_row(r["paper_name"], "ours", *(c[0] for c in cells))
            table.add_row("", "paper", *(c[1] for c in cells))
            table.add_row("", "Δ", *(c[2] or "-" for c in cells), end_section=True)
        console.print(table)
        for note in _notes(group):
            console.print(note, markup=False, highlight=False)
        console.print()
    console.print(CONVENTIONS, markup=False, highlight=False)
