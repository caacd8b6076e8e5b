"""Terminal tables of runs (rich)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def fmt_bytes(n: int | float) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def print_runs(records: Sequence[dict[str, Any]], title: str = "", console: Console | None = None) -> None:
    table = Table(title=title)
    for col, justify in [
        ("method", "left"),
        ("trainable params", "right"),
        ("accuracy before", "right"),
        ("accuracy after", "right"),
        ("fine-tune s", "right"),
        ("cache", "right"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in records:
        table.add_row(
            r["method"],
            f"{r['trainable_params']:,}",
            f"{100 * r['accuracy_before']:.2f} %",
            f"{100 * r['accuracy_after']:.2f} %",
            f"{r['finetune_seconds']:.3f}",
            fmt_bytes(r.get("cache_bytes", 0)),
        )
    (console or Console()).print(table)
