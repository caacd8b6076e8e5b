"""Every method on the cooling-fan tasks, over seeds: accuracy before/after, fine-tune time and
Forward Cache bytes, written to results/fan/ (fan.json, fan.md, fan.png).

    INSTANTFT_DATA=/work/shared/data .venv/bin/python studies/fan.py --seeds 10 --threads 1

Each run is ``instantft finetune --dataset TASK --method M --seed S`` with the task's defaults
(lr 0.03, 10 epochs, batch 20, rank 4): the seed draws the batch order and the adapters' init;
the split (fine-tune on the target's take 1, evaluate on its take 2) does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from instantft.fixedpoint import FixedPointConfig
from instantft.machine import machine_info
from instantft.methods import method_names
from instantft.run import Run, config_for, finetune
from instantft.settings import Runtime, Task

TASKS = ("fan-silentA-noisy", "fan-silentB-noisy", "fan-silentA-silentB", "fan-12cm-14cm", "fan-12cm-8cm")
KEYS = ("method", "dataset", "seed", "lr", "epochs", "samples", "eval_samples", "trainable_params",
        "accuracy_before", "accuracy_after", "finetune_seconds", "cache_bytes", "diverged")  # fmt: skip


def run_all(tasks: list[str], methods: list[str], seeds: int, threads: int) -> list[dict[str, Any]]:
    runtime = Runtime(threads=threads)
    records = []
    for task in tasks:
        for method in methods:
            for seed in range(seeds):
                # "instantft-fixed": InstantFT in the FPGA core's integer arithmetic (--numerics fixed)
                fixed = FixedPointConfig() if method == "instantft-fixed" else None
                name = "instantft" if fixed is not None else method
                run = Run(method=name, task=Task(dataset=task), config=config_for(task, seed=seed), fixed=fixed)
                record = finetune(run, runtime, record_divergence=True).record
                records.append({**{k: record[k] for k in KEYS}, "method": method})
                print(f"{task} {method} seed {seed}: {record['accuracy_after']:.4f} "
                      f"{record['finetune_seconds']:.3f}s", flush=True)  # fmt: skip
    return records


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for (task, method), rs in groups.items():
        after = [r["accuracy_after"] for r in rs]
        rows.append({
            "task": task,
            "method": method,
            "runs": len(rs),
            "accuracy_before": statistics.mean(r["accuracy_before"] for r in rs),
            "accuracy_after_mean": statistics.mean(after),
            "accuracy_after_std": statistics.stdev(after) if len(after) > 1 else 0.0,
            "finetune_seconds_median": statistics.median(r["finetune_seconds"] for r in rs),
            "cache_bytes": max(r["cache_bytes"] for r in rs),
            "trainable_params": rs[0]["trainable_params"],
            "diverged": sum(r["diverged"] is not None for r in rs),
        })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], threads: int, command: str) -> str:
    out = [
        "# Every method on the cooling-fan tasks",
        "",
        f"`{command}` on {machine['cpu']}, {threads} thread(s), torch {machine['torch']}, "
        f"commit {machine['git_commit']}. Mean ± standard deviation over the seeds; fine-tune time is the "
        "median (the training loop only: the Forward Cache fill included, data loading and evaluation not).",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        ref = {r["method"]: r for r in rs}
        out += [f"## {task}", "",
                "| method | runs | before | after | fine-tune s | LoRA-All's time / this | cache bytes | trainable |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        lora = ref.get("lora-all")
        for r in rs:
            speed = ""
            if lora is not None and r["finetune_seconds_median"] > 0:
                ratio = lora["finetune_seconds_median"] / r["finetune_seconds_median"]
                speed = f"{ratio:.0f}x less" if ratio >= 1.5 else f"{ratio:.2g}x"
            div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
            out.append(
                f"| {r['method']} | {r['runs']} | {100 * r['accuracy_before']:.1f} | "
                f"{100 * r['accuracy_after_mean']:.1f} ± {100 * r['accuracy_after_std']:.1f}{div} | "
                f"{r['finetune_seconds_median']:.4f} | {speed} | {r['cache_bytes']:,} | {r['trainable_params']:,} |"
            )
        inst = ref.get("instantft")
        if lora is not None and inst is not None:
            gap = 100 * (inst["accuracy_after_mean"] - lora["accuracy_after_mean"])
            ratio = lora["finetune_seconds_median"] / max(inst["finetune_seconds_median"], 1e-9)
            met = "met" if gap >= -1.0 and ratio >= 20 else "missed"
            out += ["", f"InstantFT vs LoRA-All: {gap:+.1f} pt accuracy at {ratio:.1f}x less fine-tune time "
                    f"(target: within 1 pt at 20x less: {met})."]  # fmt: skip
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.2 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        by = {r["method"]: r for r in rows if r["task"] == task}
        xs = range(len(methods))
        ax = axes[i][0]
        ax.bar([x - 0.2 for x in xs], [100 * by[m]["accuracy_before"] for m in methods], 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [100 * by[m]["accuracy_after_mean"] for m in methods], 0.4,
               yerr=[100 * by[m]["accuracy_after_std"] for m in methods], label="after")  # fmt: skip
        ax.set_ylabel(f"{task}\naccuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="lower right")
        ax = axes[i][1]
        ax.bar(xs, [max(by[m]["finetune_seconds_median"], 1e-5) for m in methods])
        ax.set_yscale("log")
        ax.set_ylabel("fine-tune s (median)")
        ax = axes[i][2]
        ax.bar(xs, [by[m]["cache_bytes"] / 1024 for m in methods])
        ax.set_ylabel("Forward Cache (KiB)")
        for ax in axes[i]:
            ax.set_xticks(list(xs))
            ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(method_names()), help="also: instantft-fixed (--numerics fixed)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/fan"))
    p.add_argument("--name", default="fan", help="the output files' stem")
    p.add_argument("--render", action="store_true", help="rewrite the table and plot from the JSON only")
    a = p.parse_args()
    if a.render:
        saved = json.loads((a.out / f"{a.name}.json").read_text())
        rows = summarise(saved["runs"])
        (a.out / f"{a.name}.md").write_text(markdown(rows, saved["machine"], saved["threads"], saved["command"]))
        plot(rows, a.out / f"{a.name}.png")
        return
    command = (f"python studies/fan.py --seeds {a.seeds} --threads {a.threads}"
               + ("" if a.tasks == ",".join(TASKS) else f" --tasks {a.tasks}")
               + ("" if a.methods == ",".join(method_names()) else f" --methods {a.methods}")
               + ("" if a.name == "fan" else f" --name {a.name}"))  # fmt: skip
    start = time.time()
    records = run_all(a.tasks.split(","), a.methods.split(","), a.seeds, a.threads)
    rows = summarise(records)
    machine = machine_info()
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "machine": machine, "threads": a.threads, "wall_seconds": time.time() - start,
              "summary": rows, "runs": records}  # fmt: skip
    (a.out / f"{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / f"{a.name}.md").write_text(markdown(rows, machine, a.threads, command))
    plot(rows, a.out / f"{a.name}.png")
    print((a.out / f"{a.name}.md").read_text())


if __name__ == "__main__":
    main()
