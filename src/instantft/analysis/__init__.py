"""Table 1 from the model: parameters, forward/backward FLOPs and memory of each method.

:mod:`~instantft.analysis.costs` counts, :mod:`~instantft.analysis.paper` holds the paper's printed
values, :mod:`~instantft.analysis.conventions` scores counting conventions against them and
:mod:`~instantft.analysis.table1` is the ``instantft table1`` command. Names are imported on first
use, so building the CLI parser does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "CONVENTIONS": "table1",
    "add_table1": "table1",
    "table1_markdown": "table1",
    "table1_rows": "table1",
    "PAPER_RANK": "paper",
    "PAPER_TABLE1": "paper",
    "DEFAULT": "costs",
    "Convention": "costs",
    "Costs": "costs",
    "costs": "costs",
    "describe": "costs",
    "plan_of": "costs",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
