"""The C engine after the engine refactor, against its own figures from before it.

Repeats the C half of ``studies/engines_numba_vs_c.py`` (same task, same timing: ``Method.fit``
of skip2-lora and instantft on RotMNIST 90°, 1,024 samples, one thread, CPU and wall time, median
of interleaved rounds after a warm-up) on the current commit, and compares each method's medians
with the ``[c]`` rows that script wrote to ``results/engines/numba_vs_c.json``.

``--ab DIR`` also measures the two commits the same way, side by side: DIR holds the source of
the commit before (``git archive <commit> | tar -x -C DIR``, its C core built there with
``python setup.py build_ext --inplace``); processes on the old and the new tree alternate
(``--pairs`` of each), every process running the C half alone, and each figure is the median of
all the rounds of its tree.

    .venv/bin/python studies/engines_after.py --rounds 15 --out results/engines --ab /tmp/eng-before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from engines_numba_vs_c import METHODS, measure, setup, table  # noqa: E402 (after the path)


def _c_half(rounds: int, src: Path | None) -> dict[str, Any]:
    """The C half in a fresh process on the package in ``src`` (None: this checkout's)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--c-half", "--rounds", str(rounds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=HERE.parent)
    return json.loads(out.stdout)


def ab(before_tree: Path, pairs: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, dict[str, dict[str, list[float]]]] = {
        tree: {m: {"cpu": [], "wall": []} for m in METHODS} for tree in ("before", "after")
    }
    for _ in range(pairs):
        for tree, src in (("before", before_tree / "src"), ("after", None)):
            got = _c_half(rounds, src)
            for m in METHODS:
                runs[tree][m]["cpu"] += got[f"{m}[c]"]["cpu_runs"]
                runs[tree][m]["wall"] += got[f"{m}[c]"]["wall_runs"]
    out: dict[str, Any] = {}
    for m in METHODS:
        b, a = runs["before"][m], runs["after"][m]
        out[m] = {
            "cpu_seconds_before": statistics.median(b["cpu"]),
            "cpu_seconds_after": statistics.median(a["cpu"]),
            "wall_seconds_before": statistics.median(b["wall"]),
            "wall_seconds_after": statistics.median(a["wall"]),
            "rounds_each": len(a["cpu"]),
            # the spread between processes of one tree, beside the difference between the trees
            "cpu_process_medians_before": [
                statistics.median(b["cpu"][i : i + rounds]) for i in range(0, len(b["cpu"]), rounds)
            ],
            "cpu_process_medians_after": [
                statistics.median(a["cpu"][i : i + rounds]) for i in range(0, len(a["cpu"]), rounds)
            ],
            "runs": runs["before"][m] | {"after_cpu": a["cpu"], "after_wall": a["wall"]},
        }
    return out


def _verdict(c: dict[str, Any]) -> str:
    parts = []
    for k in ("cpu", "wall"):
        r = c[f"{k}_seconds_after"] / c[f"{k}_seconds_before"]
        parts.append(f"{k.upper() if k == 'cpu' else k} {'at most the before figure' if r <= 1 else 'above it'}"
                     f" ({(r - 1) * 100:+.1f}%)")  # fmt: skip
    return ", ".join(parts)


def _rows(compare: dict[str, Any]) -> list[str]:
    return [
        "| method | CPU s before | CPU s after | after/before | wall s before | wall s after | after/before |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {m} | {c['cpu_seconds_before']:.4f} | {c['cpu_seconds_after']:.4f} "
            f"| {c['cpu_seconds_after'] / c['cpu_seconds_before']:.3f} | {c['wall_seconds_before']:.4f} "
            f"| {c['wall_seconds_after']:.4f} | {c['wall_seconds_after'] / c['wall_seconds_before']:.3f} |"
            for m, c in compare.items()
        ),
        "",
        *(f"- {m}: {_verdict(c)}" for m, c in compare.items()),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", default="results/engines")
    p.add_argument("--before", default="results/engines/numba_vs_c.json")
    p.add_argument("--ab", type=Path, default=None, help="the source tree of the commit before (see above)")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--c-half", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.c_half:
        print(json.dumps(measure(("c",), args.rounds)))
        return
    before = json.loads(Path(args.before).read_text())
    rows = measure(("c",), args.rounds)
    compare = {}
    for m in METHODS:
        b, a = before["rows"][f"{m}[c]"], rows[f"{m}[c]"]
        compare[m] = {
            f"{k}_{when}": x[k] for k in ("cpu_seconds", "wall_seconds") for when, x in (("before", b), ("after", a))
        }
    side = ab(args.ab, args.pairs, args.rounds) if args.ab else None
    info = setup(args.rounds)
    out = {
        "setup": info,
        "before_commit": before["setup"]["commit"],
        "rows": rows,
        "compare": compare,
        "side_by_side": side,
        "command": "python studies/engines_after.py " + " ".join(argv or sys.argv[1:]),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "after.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# The C engine before and after the engine refactor",
        "",
        f"`{out['command']}` on commit `{info['commit']}`: {info['cpu']}, {info['threads']} thread, "
        f"C kernels `{info['c_kernels']}`. {info['task']}; {info['timed']}.",
        "",
        f"## Against the `[c]` rows of `{args.before}` (commit `{out['before_commit']}`, measured there beside numba)",
        "",
        f"Median of {args.rounds} interleaved rounds after one warm-up fit of each, in one process.",
        "",
        *table(rows),
        "",
        *_rows(compare),
        "",
    ]
    if side:
        n = next(iter(side.values()))["rounds_each"]
        md += [
            f"## Side by side: commit `{out['before_commit']}` vs this commit, C engine only",
            "",
            f"{args.pairs} processes on each tree, alternating, {args.rounds} rounds each: medians of {n} fits "
            "per method and tree.",
            "",
            *_rows(side),
            "",
            "Median CPU ms of each process, in the order they ran (the spread between processes of one tree):",
            "",
            *(
                f"- {m}: before {', '.join(f'{x * 1e3:.1f}' for x in c['cpu_process_medians_before'])}; "
                f"after {', '.join(f'{x * 1e3:.1f}' for x in c['cpu_process_medians_after'])}"
                for m, c in side.items()
            ),
            "",
        ]
    Path(args.out, "after.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
