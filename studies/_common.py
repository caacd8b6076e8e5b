"""What the studies share: the resumable runner (groups of fine-tuning runs, inline or in worker
processes, saved after every group so an interrupt loses only the groups in flight), the
``results.json`` runs it keeps, and the Markdown / CSV / PNG writers of their reports.

Not a study (its name starts with ``_``): the scripts beside it import it as ``_common``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from instantft.analysis.paper import PAPER_NAMES
from instantft.extras import require
from instantft.fileio import atomic_write, atomic_write_json
from instantft.progress import progress_bar

#: the checkout the studies belong to: default outputs go under ROOT/results
ROOT = Path(__file__).resolve().parents[1]
#: the methods in the order of the paper's figures and the talk's table
METHODS = ("none", "ft-all", "ft-last", "ft-bias", "lora-all", "lora-last", "skip-lora", "skip2-lora", "instantft")
#: display names: the paper's, with the talk's name for InstantFT's method
LABELS = {"none": "No fine-tuning", **PAPER_NAMES, "instantft": "InstantFT (Quant Skip2-LoRA)"}



class StudyParser(argparse.ArgumentParser):
    """A study's command line: a usage error is one line, as the library's commands' are."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


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


# --- the runs of results.json: every method of a group on one task ----------------------------------
@dataclass(frozen=True)
class Group:
    """Runs that share a task: one (study, dataset, angle, seed, variant) and several methods."""

    study: str
    dataset: str
    angle: float
    seed: int
    methods: tuple[str, ...]
    variant: str = "default"
    overrides: tuple[tuple[str, Any], ...] = ()
    samples: int = 1024
    eval_samples: int | None = None
    checkpoint: str | None = None  # None: the bundled backbone of the dataset
    backbone: str = "lenet5"  # the bundled family (models.FAMILIES) when no checkpoint is given


def run_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["study"], r["dataset"], float(r["angle"]), r["method"], int(r["seed"]), r.get("variant", "default"))


@lru_cache(maxsize=4)
def _backbone(dataset: str, checkpoint: str | None, family: str = "lenet5") -> Any:
    from instantft.run import load_backbone

    return load_backbone(dataset, checkpoint, family)


def run_group(group: Group, threads: int | None = None, data_dir: str | None = None) -> list[dict[str, Any]]:
    """Run every method of a group (in a worker process or inline)."""
    import torch

    from instantft.data import make_task
    from instantft.machine import machine_info
    from instantft.models import accuracy, predict
    from instantft.run import Prepared, Run, config_for, finetune
    from instantft.settings import Task

    if threads is not None:
        torch.set_num_threads(threads)  # a worker process's entry
    backbone = _backbone(group.dataset, group.checkpoint, group.backbone)
    config = config_for(group.dataset, seed=group.seed, **dict(group.overrides))
    task = make_task(
        group.dataset,
        angle=group.angle,
        seed=group.seed,
        samples=group.samples,
        eval_samples=group.eval_samples,
        data_dir=data_dir,
    )
    machine = machine_info()
    backbone[0].eval()
    before = accuracy(predict(backbone[0], task.evaluate.images), task.evaluate.labels)
    prepared = Prepared(backbone[0], backbone[1], task, accuracy_before=before)
    spec = Task(dataset=group.dataset, angle=group.angle, samples=group.samples, eval_samples=group.eval_samples)
    out = []
    for method in group.methods:
        run = Run(method=method, task=spec, config=config)
        rec = finetune(run, prepared=prepared, record_divergence=True).record
        rec.update(
            study=group.study,
            variant=group.variant,
            backbone=group.backbone,
            machine=machine,
            package_version=machine["instantft"],
            git_commit=machine["git_commit"],
        )
        out.append(rec)
    return out


def load_results(path: Path) -> list[dict[str, Any]]:
    """The runs already in ``path``, each validated (:class:`instantft.records.RunRecord`)."""
    from instantft.records import RunRecord, parse_json, validate_list

    if not path.is_file():
        return []
    data = parse_json(path.read_bytes(), f"{path} (move it away to start afresh)", max_bytes=1 << 28)
    validate_list(RunRecord, data, str(path))
    return list(data)


def run_groups(
    groups: Sequence[Group],
    results_path: Path,
    jobs: int = 1,
    show_progress: bool = True,
    data_dir: str | None = None,
    description: str = "reproduce",
) -> list[dict[str, Any]]:
    """Run the groups whose runs are not yet in ``results_path``; save after every group."""
    results = load_results(results_path)
    done = {run_key(r) for r in results}
    todo = []
    for g in groups:
        missing = tuple(m for m in g.methods if (g.study, g.dataset, float(g.angle), m, g.seed, g.variant) not in done)
        if missing:
            todo.append(replace(g, methods=missing))
    total = sum(len(g.methods) for g in groups)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(description, total=total, completed=total - sum(len(g.methods) for g in todo), status="")

        def finish(records: list[dict[str, Any]], g: Group) -> None:
            results.extend(records)
            atomic_write_json(results_path, results)
            bar.advance(task, len(records))
            bar.update(task, status=f"{g.dataset} {g.angle:g}° seed {g.seed} {g.variant}")

        work = functools.partial(run_group, threads=1 if jobs > 1 else None, data_dir=data_dir)
        run_pending(todo, work, lambda g, records: finish(records, g), jobs)
    return results


# --- report writing -----------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def pyplot() -> Any:
    """matplotlib.pyplot, headless (the 'plot' extra)."""
    matplotlib = require("plot", "matplotlib", "the studies' figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path, dpi: int = 120, **kwargs: Any) -> None:
    """Write ``fig`` to ``path`` atomically and close it."""
    plt = pyplot()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", **kwargs))
    plt.close(fig)
