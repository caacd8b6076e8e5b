"""The numba engine against the C engine, measured before numba was removed.

This script ran on commit 8ef42b907c3fdd17b1276a0d8321ca141fe4315a of branch ``engine``, the last
commit with the numba engine (``src/instantft/engine/kernels.py``); it cannot run after it, since
``--engine numba`` no longer exists. Its C half still runs: ``studies/engines_after.py`` repeats
it on a later commit and compares with what this script wrote.

What is timed: ``Method.fit`` of skip2-lora and instantft on RotMNIST 90° with 1,024 samples (the
paper's task; cache fill included, building the method not), in one process, one thread, the
engines interleaved round by round after a warm-up of each (numba's kernels compiled or loaded
from its cache), CPU time (``time.process_time``) and wall time, median of the rounds.

    .venv/bin/python studies/engines_numba_vs_c.py --rounds 15 --out results/engines
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread throughout

import importlib.util

if __name__ == "__main__" and importlib.util.find_spec("numba") is None:
    raise SystemExit(
        "error: this study compares the numba engine, removed since; it runs in a checkout of commit 8ef42b9 "
        "(with numba installed), and its results are in results/engines/numba_vs_c.md"
    )

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

METHODS = ("skip2-lora", "instantft")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def commit() -> str:
    here = Path(__file__).resolve().parent
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()


def measure(engines: tuple[str, ...], rounds: int, samples: int = 1024, angle: float = 90.0) -> dict[str, Any]:
    """{row: {cpu_seconds, wall_seconds, cpu_runs, wall_runs}} with rows ``method[engine]``."""
    from instantft.data import make_task
    from instantft.methods import create
    from instantft.run import config_for, load_backbone

    torch.set_num_threads(1)
    model, _ = load_backbone("rotmnist")
    config = config_for("rotmnist")
    data = make_task("rotmnist", angle=angle, samples=samples, seed=config.seed).finetune
    rows = [(f"{m}[{e}]", m, e) for e in engines for m in METHODS]

    def once(method: str, engine: str) -> tuple[float, float]:
        fitted = create(method, model, replace(config, engine=engine))
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        fitted.fit(data)
        return time.process_time() - c0, time.perf_counter() - w0

    for _, m, e in rows:  # warm-up: kernels compiled / loaded, the chain converted
        once(m, e)
    cpu: dict[str, list[float]] = {r: [] for r, _, _ in rows}
    wall: dict[str, list[float]] = {r: [] for r, _, _ in rows}
    for _ in range(rounds):
        for row, m, e in rows:
            c, w = once(m, e)
            cpu[row].append(c)
            wall[row].append(w)
    return {
        row: {
            "cpu_seconds": statistics.median(cpu[row]),
            "wall_seconds": statistics.median(wall[row]),
            "cpu_runs": cpu[row],
            "wall_runs": wall[row],
        }
        for row, _, _ in rows
    }


def setup(rounds: int) -> dict[str, Any]:
    import numpy as np

    from instantft.engine import cengine

    return {
        "task": "rotmnist, angle 90, 1024 fine-tuning samples, the paper's config (config_for('rotmnist'))",
        "timed": "Method.fit (cache fill + every epoch), CPU time and wall time",
        "rounds": rounds,
        "threads": 1,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "c_kernels": cengine.build_info() if cengine.available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "commit": commit(),
    }


def table(rows: dict[str, Any]) -> list[str]:
    out = ["| row | CPU s (median) | wall s (median) |", "|---|---:|---:|"]
    out += [f"| {r} | {v['cpu_seconds']:.4f} | {v['wall_seconds']:.4f} |" for r, v in rows.items()]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", default="results/engines")
    args = p.parse_args(argv)
    import numba

    rows = measure(("c", "numba"), args.rounds)
    info = {**setup(args.rounds), "numba": numba.__version__}
    ratio = {m: rows[f"{m}[numba]"]["cpu_seconds"] / rows[f"{m}[c]"]["cpu_seconds"] for m in METHODS}
    out = {"setup": info, "rows": rows, "numba_cpu_over_c_cpu": ratio,
           "command": "python studies/engines_numba_vs_c.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "numba_vs_c.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# The numba engine vs the C engine (before numba was removed)",
        "",
        f"`{out['command']}` on commit `{info['commit']}`: {info['cpu']}, {info['threads']} thread, "
        f"C kernels `{info['c_kernels']}`, numba {info['numba']}, torch {info['torch']}.",
        f"{info['task']}; {info['timed']}: median of {args.rounds} interleaved rounds after one warm-up fit of each.",
        "",
        *table(rows),
        "",
        *(f"- {m}: numba takes {ratio[m]:.2f}x the CPU time of c" for m in METHODS),
        "",
    ]
    Path(args.out, "numba_vs_c.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
