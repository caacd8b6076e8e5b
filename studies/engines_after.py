"""The C engine after the engine refactor, against its own figures from before it.

Repeats the C half of ``studies/engines_numba_vs_c.py`` (same task, same timing: ``Method.fit``
of skip2-lora and instantft on RotMNIST 90°, 1,024 samples, one thread, CPU and wall time, median
of interleaved rounds after a warm-up) on the current commit, and compares each method's medians
with the ``[c]`` rows that script wrote to ``results/engines/numba_vs_c.json``.

    .venv/bin/python studies/engines_after.py --rounds 15 --out results/engines
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engines_numba_vs_c import METHODS, measure, setup, table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", default="results/engines")
    p.add_argument("--before", default="results/engines/numba_vs_c.json")
    args = p.parse_args(argv)
    before = json.loads(Path(args.before).read_text())
    rows = measure(("c",), args.rounds)
    compare = {}
    for m in METHODS:
        b, a = before["rows"][f"{m}[c]"], rows[f"{m}[c]"]
        compare[m] = {
            **{f"{k}_before": b[k] for k in ("cpu_seconds", "wall_seconds")},
            **{f"{k}_after": a[k] for k in ("cpu_seconds", "wall_seconds")},
            "cpu_after_over_before": a["cpu_seconds"] / b["cpu_seconds"],
            "wall_after_over_before": a["wall_seconds"] / b["wall_seconds"],
            "no_regression": a["cpu_seconds"] <= b["cpu_seconds"] and a["wall_seconds"] <= b["wall_seconds"],
        }
    info = setup(args.rounds)
    out = {"setup": info, "before_commit": before["setup"]["commit"], "rows": rows, "compare": compare,
           "command": "python studies/engines_after.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "after.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# The C engine before and after the engine refactor",
        "",
        f"`{out['command']}` on commit `{info['commit']}`, against the `[c]` rows of `{args.before}` "
        f"(commit `{out['before_commit']}`): {info['cpu']}, {info['threads']} thread, C kernels `{info['c_kernels']}`.",
        f"{info['task']}; {info['timed']}: median of {args.rounds} interleaved rounds after one warm-up fit of each.",
        "",
        *table(rows),
        "",
        "| method | CPU s before | CPU s after | after/before | wall s before | wall s after | after/before |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {m} | {c['cpu_seconds_before']:.4f} | {c['cpu_seconds_after']:.4f} | {c['cpu_after_over_before']:.3f} "
            f"| {c['wall_seconds_before']:.4f} | {c['wall_seconds_after']:.4f} | {c['wall_after_over_before']:.3f} |"
            for m, c in compare.items()
        ),
        "",
        *(
            f"- {m}: {'at most' if c['no_regression'] else 'MORE than'} the before figures (CPU and wall)"
            for m, c in compare.items()
        ),
        "",
    ]
    Path(args.out, "after.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
