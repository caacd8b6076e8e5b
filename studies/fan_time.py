"""Fine-tune time of InstantFT against LoRA-All (and FT-All) on the fan tasks, measured in
alternation (A B C A B C ...) so that a change in the machine's load hits every method alike:
results/fan/time.{json,md}. Median and quartiles over the rounds; seed 0, the tasks' defaults.

    INSTANTFT_DATA=/work/shared/data .venv/bin/python studies/fan_time.py --rounds 15 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from instantft.machine import machine_info
from instantft.run import Run, config_for, finetune
from instantft.settings import Runtime, Task

TASKS = ("fan-silentA-noisy", "fan-silentB-noisy", "fan-silentA-silentB", "fan-12cm-14cm", "fan-12cm-8cm")
METHODS = ("lora-all", "ft-all", "instantft")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/fan"))
    a = p.parse_args()
    runtime = Runtime(threads=a.threads)
    times: dict[str, dict[str, list[float]]] = {t: {m: [] for m in METHODS} for t in TASKS}
    for task in TASKS:
        for m in METHODS:  # one unmeasured run each: the chain conversion and first-call costs
            finetune(Run(method=m, task=Task(dataset=task), config=config_for(task)), runtime)
        for _ in range(a.rounds):
            for m in METHODS:
                rec = finetune(Run(method=m, task=Task(dataset=task), config=config_for(task)), runtime).record
                times[task][m].append(rec["finetune_seconds"])
    machine = machine_info()
    command = f"python studies/fan_time.py --rounds {a.rounds} --threads {a.threads}"
    lines = ["# Fine-tune time on the fan tasks, methods in alternation", "",
             f"`{command}` on {machine['cpu']}, {a.threads} thread(s), commit {machine['git_commit']}. "
             "Seconds: median [lower quartile, upper quartile] over the rounds.", "",
             "| task | " + " | ".join(METHODS) + " | LoRA-All / InstantFT (medians) | target 20x |",
             "|---|" + "---:|" * len(METHODS) + "---:|---|"]  # fmt: skip
    for task, by in times.items():

        def cell(xs: list[float]) -> str:
            q = statistics.quantiles(xs, n=4)
            return f"{statistics.median(xs):.4f} [{q[0]:.4f}, {q[2]:.4f}]"

        ratio = statistics.median(by["lora-all"]) / statistics.median(by["instantft"])
        lines.append(f"| {task} | " + " | ".join(cell(by[m]) for m in METHODS)
                     + f" | {ratio:.1f}x | {'met' if ratio >= 20 else 'missed'} |")  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "time.json").write_text(json.dumps({"command": command, "machine": machine, "times": times}, indent=1))
    (a.out / "time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
