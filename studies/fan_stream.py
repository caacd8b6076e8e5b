"""The fan on the fly: a 12 cm fan's spectra as it moves from the quiet room silentA to the noisy
one and back (``instantft stream --dataset fan``), classified online (prequential: predict, then
learn the label) by the silentA backbone, adapted by InstantFT, LoRA-All or not at all whenever
an ADWIN detector on the error signals a drift. Writes results/fan/stream.{json,md,png}.

    INSTANTFT_DATA=/work/shared/data .venv/bin/python studies/fan_stream.py --seeds 5 --threads 1

The same stream (per seed) for every method: arrivals from each room's take 1, held-out spectra
from its take 2; the bounded memory keeps the last 200 arrivals (InstantFT: their Forward Cache
rows in NF4); each adaptation is 3 epochs over it at lr 0.03.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from instantft.machine import machine_info
from instantft.settings import FineTuneConfig, Runtime
from instantft.stream.config import StreamConfig
from instantft.stream.loop import run_stream

METHODS = ("none", "lora-all", "instantft")


def one(method: str, seed: int, args: argparse.Namespace, runtime: Runtime) -> dict[str, Any]:
    config = StreamConfig(
        dataset="fan", schedule=args.schedule, method=method, phase_length=args.phase_length,
        cache_capacity=str(args.capacity), detector="adwin", heldout=args.heldout,
        adaptation=FineTuneConfig(epochs=3, lr=0.03, seed=seed),
    )  # fmt: skip
    return run_stream(config, runtime=runtime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--schedule", default="abrupt")
    p.add_argument("--phase-length", type=int, default=300)
    p.add_argument("--capacity", type=int, default=200)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("results/fan"))
    a = p.parse_args()
    runtime = Runtime(threads=a.threads)
    reports: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in range(a.seeds):
        for m in METHODS:
            r = one(m, seed, a, runtime)
            reports[m].append(r)
            print(f"{m} seed {seed}: online {r['online_accuracy']:.4f}, {r['adaptations']} adaptations, "
                  f"{r['adaptation_seconds_total']:.3f}s", flush=True)  # fmt: skip
    machine = machine_info()
    command = f"python studies/fan_stream.py --seeds {a.seeds} --threads {a.threads}"
    rows = []
    for m, rs in reports.items():
        phases = [[ph["online_accuracy"] for ph in r["phases"]] for r in rs]
        rows.append({
            "method": m,
            "runs": len(rs),
            "online_accuracy": statistics.mean(r["online_accuracy"] for r in rs),
            "online_accuracy_std": statistics.stdev(r["online_accuracy"] for r in rs) if len(rs) > 1 else 0.0,
            "phase_accuracy": [statistics.mean(col) for col in zip(*phases, strict=True)],
            "adaptations": statistics.mean(r["adaptations"] for r in rs),
            "adaptation_seconds_total": statistics.median(r["adaptation_seconds_total"] for r in rs),
            "cache_bytes": max(r["cache_bytes"] for r in rs),
            "forgetting": statistics.mean(r["forgetting"]["forgetting"] for r in rs),
        })  # fmt: skip
    labels = [ph["label"] for ph in reports[METHODS[0]][0]["phases"]]
    a.out.mkdir(parents=True, exist_ok=True)
    slim = {m: [{k: v for k, v in r.items() if k != "adaptation_log"} for r in rs] for m, rs in reports.items()}
    (a.out / "stream.json").write_text(json.dumps({"command": command, "machine": machine, "threads": a.threads,
                                                   "summary": rows, "runs": slim}, indent=1) + "\n")  # fmt: skip
    lines = [
        "# The fan on the fly: silentA → noisy → silentA",
        "",
        f"`{command}` on {machine['cpu']}, {a.threads} thread(s), commit {machine['git_commit']}. "
        f"Schedule `{a.schedule}` ({' → '.join(labels)}, {a.phase_length} arrivals each), ADWIN on the error "
        f"triggers each adaptation (3 epochs over the last {a.capacity} arrivals, lr 0.03). Mean over seeds; "
        "adaptation time is the median of each run's total.",
        "",
        "| method | runs | online accuracy | " + " | ".join(f"phase {i + 1}: {lab}" for i, lab in enumerate(labels))
        + " | adaptations | adaptation s (total) | cache bytes | forgetting (silentA held-out) |",
        "|---|---:|---:|" + "---:|" * len(labels) + "---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['runs']} | "
            f"{100 * r['online_accuracy']:.1f} ± {100 * r['online_accuracy_std']:.1f} | "
            + " | ".join(f"{100 * x:.1f}" for x in r["phase_accuracy"])
            + f" | {r['adaptations']:.1f} | {r['adaptation_seconds_total']:.3f} | {r['cache_bytes']:,} | "
            f"{100 * r['forgetting']:+.1f} pt |"
        )
    (a.out / "stream.md").write_text("\n".join(lines) + "\n")
    from instantft.stream.plot import plot_runs

    plot_runs(reports, a.out / "stream.png", title=f"fan stream {' → '.join(labels)} (ADWIN-triggered)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
