"""Running groups of fine-tuning runs inline or in worker processes, handing each group's records
back as soon as it finishes, so that a study can save after every group and resume after an
interrupt (``reproduce`` and the fixed-point study both run this way)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

G = TypeVar("G")
Records = list[dict[str, Any]]


def run_pending(
    groups: Sequence[G], work: Callable[[G], Records], on_done: Callable[[G, Records], None], jobs: int = 1
) -> None:
    """``on_done(g, work(g))`` for every group, in order of completion; ``work`` must be picklable
    when ``jobs`` > 1. At most 2·jobs groups are in flight, so an interrupt loses only those."""
    if jobs <= 1:
        for g in groups:
            on_done(g, work(g))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: dict[Future[Records], G] = {}
        queue = list(groups)
        while queue or pending:
            while queue and len(pending) < 2 * jobs:
                g = queue.pop(0)
                pending[pool.submit(work, g)] = g
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                on_done(pending.pop(fut), fut.result())
