"""The on-the-fly study: schedules × methods × seeds on LeNet-5 / RotMNIST, plus fixed-speed
streams, retention policies and capacities, when-to-adapt variants and a second backbone:

    nice -n 10 python studies/stream.py --seeds 5 --out results/stream

Every run is :func:`instantft.stream.run_stream` with the CLI's defaults unless the group
says otherwise. One stream is drawn per (schedule, seed) and shared by all its runs. Results
are saved after every run (``runs.json``, atomically) and a re-run resumes; ``summary.json``,
``summary.md`` and the plots are rebuilt from ``runs.json`` at the end (``--report-only`` does
just that). Peak memory is measured per method in a fresh process (``instantft stream --json``).
Needs the 'studies' extra (river's detectors, matplotlib).
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import ROOT, StudyParser, pyplot
from instantft.errors import InstantFTError
from instantft.fileio import atomic_write, atomic_write_json, atomic_write_text
from instantft.progress import progress_bar

SCHEDULES = ("gradual", "abrupt", "recurring", "corrupt")
METHODS = ("none", "ft-last", "lora-all", "skip-lora", "skip2-lora", "instantft")
TRIGGERS: list[dict[str, Any]] = [
    {"adapt_every": 100},
    {"adapt_every": 200},
    {"adapt_every": 500},
    {"adapt_every": None, "detector": "adwin"},
    {"adapt_every": None, "detector": "page-hinkley"},
    {"adapt_every": 200, "detector": "adwin", "on_shift": "keep"},
    {"adapt_every": 200, "detector": "adwin", "on_shift": "reset"},
    {"adapt_every": 200, "detector": "page-hinkley", "on_shift": "reset"},
]


def plan() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(group, schedule, method, overrides) of every run, for one seed."""
    runs: list[tuple[str, str, str, dict[str, Any]]] = []
    runs += [("main", s, m, {}) for s in SCHEDULES for m in METHODS]
    runs += [
        ("fixed_speed", s, m, {"arrival_ms": 1.0})
        for s in ("gradual", "abrupt")
        for m in ("ft-last", "lora-all", "skip-lora", "skip2-lora", "instantft")
    ]
    runs += [
        ("retention", s, "instantft", {"retention": r, "cache_capacity": c})
        for s in ("abrupt", "recurring")
        for r in ("window", "reservoir")
        for c in ("256", "1024", "4096")
    ]
    runs += [("trigger", s, "instantft", kw) for s in ("gradual", "abrupt") for kw in TRIGGERS]
    runs += [("backbone", s, m, {"backbone": "mlp"}) for s in ("gradual", "abrupt") for m in METHODS]
    return runs


def run_key(group: str, schedule: str, method: str, kw: dict[str, Any], seed: int) -> str:
    return json.dumps([group, schedule, method, kw, seed], sort_keys=True)


def compact(report: dict[str, Any], keep_curve: bool) -> dict[str, Any]:
    """What the study keeps of a report (rounded; curves only where they are plotted)."""
    out = {k: v for k, v in report.items() if k not in ("windowed", "adaptation_log")}
    out["adaptation_log"] = [
        {k: (round(v, 5) if isinstance(v, float) else v) for k, v in e.items()} for e in report["adaptation_log"]
    ]
    if keep_curve:
        w = report["windowed"]
        step = max(1, len(w["at"]) // 200)
        out["windowed"] = {
            "window": w["window"],
            "at": w["at"][::step],
            "accuracy": [round(a, 4) for a in w["accuracy"][::step]],
        }
    return out


def run_study(
    out: Path,
    seeds: int,
    jobs_note: str,
    phase_length: int = 1000,
    groups: tuple[str, ...] | None = None,
    runs_name: str = "runs.json",
    show_progress: bool = True,
) -> None:
    from instantft.run import load_backbone
    from instantft.settings import FineTuneConfig
    from instantft.stream import StreamConfig, build_stream, run_stream
    from instantft.stream.config import ADAPT_EPOCHS
    from instantft.stream.loop import load_stream_backbone

    torch.set_num_threads(1)
    path = out / runs_name
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for r in json.loads(path.read_text()):
            done[r["key"]] = r
    backbones = {"lenet5": load_backbone("rotmnist")[0]}
    todo = [r for r in plan() if groups is None or r[0] in groups]
    total = seeds * len(todo)
    count = len([k for k in done if json.loads(k)[4] < seeds])
    # the schedule x method grid and the fixed-speed runs for every seed first, then the
    # InstantFT-only variants: if time runs short, what is missing is a variant's seeds
    waves = [("main", "fixed_speed"), ("retention", "trigger"), ("backbone",)]
    with progress_bar(show_progress) as bar:
        task = bar.add_task("stream", total=total, completed=count, status="")
        for wave, seed, schedule in itertools.product(waves, range(seeds), SCHEDULES):
            mine = [(g, s, m, kw) for g, s, m, kw in todo if s == schedule and g in wave]
            if all(run_key(g, s, m, kw, seed) in done for g, s, m, kw in mine):
                continue
            stream = build_stream("rotmnist", schedule, phase_length=phase_length, seed=seed, heldout=500)
            for group, s, method, kw in mine:
                key = run_key(group, s, method, kw, seed)
                if key in done:
                    continue
                fit = FineTuneConfig(epochs=ADAPT_EPOCHS, seed=seed)
                config = StreamConfig(schedule=schedule, method=method, phase_length=phase_length, adaptation=fit, **kw)
                if config.backbone not in backbones:
                    backbones[config.backbone] = load_stream_backbone("rotmnist", config.backbone)
                report = run_stream(config, backbone=backbones[config.backbone], stream=stream)
                entry = {"key": key, "group": group, "schedule": s, "method": method, "overrides": kw, "seed": seed}
                entry.update(compact(report, keep_curve=group in ("main", "fixed_speed", "backbone")))
                done[key] = entry
                atomic_write_json(path, list(done.values()))
                bar.advance(task)
                bar.update(task, status=f"{group} {schedule} {method} {kw or ''} seed {seed}: "
                                        f"online {report['online_accuracy']:.4f}")  # fmt: skip
    meta: dict[str, Any] = {
        "command": f"nice -n 10 python studies/stream.py --seeds {seeds} --out {out}"
        + (f" --phase-length {phase_length}" if phase_length != 1000 else "")
        + (f" --groups {','.join(groups)} --runs-name {runs_name}" if groups else ""),
        "phase_length": phase_length,
        "seeds": seeds,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": 1,
        "note": jobs_note,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta_path = out / "meta.json"
    if meta_path.exists():  # several processes (--groups) share one meta
        old = json.loads(meta_path.read_text())
        commands = [c for c in str(old.get("command", "")).split(" && ") if c]
        meta["command"] = " && ".join(dict.fromkeys([*commands, meta["command"]]))
    atomic_write_json(meta_path, meta)


def measure_memory(out: Path) -> None:
    """Peak RSS of ``instantft stream`` per method, each in a fresh process (abrupt, seed 0)."""
    rows = []
    for method in METHODS:
        cmd = [
            sys.executable,
            "-m",
            "instantft.stream.cli",
            "--schedule",
            "abrupt",
            "--method",
            method,
            "--threads",
            "1",
            "--json",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise InstantFTError(f"memory run of {method} failed: {proc.stderr.strip()[-300:]}")
        r = json.loads(proc.stdout)
        rows.append(
            {
                "method": method,
                "peak_rss_mb": r["peak_rss_mb"],
                "rss_before_run_mb": r["rss_before_run_mb"],
                "cache_bytes": r["cache_bytes"],
                "retained_image_bytes": r["retained_image_bytes"],
            }
        )
        print(f"memory {method}: peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    atomic_write_json(out / "memory.json", rows)


# --- summary ---------------------------------------------------------------------------------------
def _ms(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (group, schedule, method, overrides): means over seeds."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault(json.dumps([r["group"], r["schedule"], r["method"], r["overrides"]]), []).append(r)
    rows = []
    for key, rs in cells.items():
        group, schedule, method, kw = json.loads(key)
        rec = [x["samples"] for r in rs for x in r["recovery"]]
        rows.append(
            {
                "group": group,
                "schedule": schedule,
                "method": method,
                "overrides": kw,
                "seeds": len(rs),
                "online_accuracy": _ms([r["online_accuracy"] for r in rs]),
                "phases": [
                    {
                        "label": p["label"],
                        "online_accuracy": float(np.mean([r["phases"][n]["online_accuracy"] for r in rs])),
                    }
                    for n, p in enumerate(rs[0]["phases"])
                ],
                "adaptations": float(np.mean([r["adaptations"] for r in rs])),
                "adaptation_seconds_total": _ms([r["adaptation_seconds_total"] for r in rs]),
                "latency_ms_median": _median([r["latency_ms"]["median"] for r in rs]),
                "latency_ms_p95": _median([r["latency_ms"]["p95"] for r in rs]),
                "stale_arrivals": float(np.mean([r["stale_arrivals"] for r in rs])),
                "forgetting": _ms([r["forgetting"]["forgetting"] for r in rs]),
                "clean_after": float(np.mean([r["forgetting"]["clean_after"] for r in rs])),
                "heldout_mean": _median(
                    [
                        float(np.mean([e["heldout_accuracy"] for e in r["adaptation_log"]]))
                        for r in rs
                        if r["adaptation_log"]
                    ]
                ),
                "heldout_after_last": _median(
                    [r["adaptation_log"][-1]["heldout_accuracy"] for r in rs if r["adaptation_log"]]
                ),
                "recovery_samples_mean": float(np.mean([x for x in rec if x is not None]))
                if any(x is not None for x in rec)
                else None,
                "recovery_not_reached": sum(x is None for x in rec),
                "recovery_switches": len(rec),
                "cache_bytes": float(np.mean([r["cache_bytes"] for r in rs])),
                "recomputed": float(np.mean([r["cache"]["recomputed"] for r in rs])),
                "computed": float(np.mean([r["cache"]["computed"] for r in rs])),
            }
        )
    return rows


def _find(rows: list[dict[str, Any]], group: str, schedule: str, method: str, kw: dict[str, Any] | None = None):
    for r in rows:
        if (
            r["group"] == group
            and r["schedule"] == schedule
            and r["method"] == method
            and (kw is None or r["overrides"] == kw)
        ):
            return r
    return None


def targets(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's four targets, each with its measured figure and met / missed."""
    out = []
    for s in ("gradual", "abrupt"):
        a, b = _find(rows, "main", s, "instantft"), _find(rows, "main", s, "lora-all")
        if a and b:
            gap = 100 * (a["online_accuracy"]["mean"] - b["online_accuracy"]["mean"])
            ratio = b["adaptation_seconds_total"]["mean"] / a["adaptation_seconds_total"]["mean"]
            out.append(
                {
                    "target": f"{s}: InstantFT online accuracy within 1 pt of LoRA-All at >= 20x less adaptation time",
                    "measured": f"InstantFT {100 * a['online_accuracy']['mean']:.2f} % vs LoRA-All {100 * b['online_accuracy']['mean']:.2f} % "  # noqa: E501
                    f"({gap:+.2f} pt); total adaptation time {ratio:.1f}x less",
                    "met": bool(gap >= -1.0 and ratio >= 20),
                }
            )
    # recovery after the abrupt 0 -> 90 switch, M = 200
    rec = [
        r["recovery"][0]
        for r in runs
        if r["group"] == "main" and r["schedule"] == "abrupt" and r["method"] == "instantft" and r["recovery"]
    ]
    if rec:
        samples = [x["samples"] for x in rec]
        ok = [x is not None and x <= 400 for x in samples]
        reached = [x for x in samples if x is not None]
        out.append(
            {
                "target": "abrupt 0 -> 90: InstantFT windowed accuracy within 2 pts of its steady state after <= 2M = 400 samples",  # noqa: E501
                "measured": f"per seed {samples} samples (median {statistics.median(reached) if reached else 'n/a'}); "
                f"{sum(ok)}/{len(ok)} seeds within 400",
                "met": all(ok),
            }
        )
    for s in ("gradual", "abrupt"):
        a, b = _find(rows, "fixed_speed", s, "instantft"), _find(rows, "fixed_speed", s, "lora-all")
        if a and b:
            out.append(
                {
                    "target": f"{s}, fixed-speed stream (1 ms): InstantFT online accuracy beats LoRA-All's",
                    "measured": f"InstantFT {100 * a['online_accuracy']['mean']:.2f} % vs LoRA-All {100 * b['online_accuracy']['mean']:.2f} %",  # noqa: E501
                    "met": bool(a["online_accuracy"]["mean"] > b["online_accuracy"]["mean"]),
                }
            )
    from instantft import nf4

    per_row = nf4.nbytes_per_row(1176 + 400 + 120 + 84 + 10)
    big = _find(rows, "retention", "abrupt", "instantft", {"retention": "window", "cache_capacity": "4096"})
    measured = f"4,096 rows x {per_row} B = {4096 * per_row:,} B"
    if big:
        measured += f"; largest cache measured in the 4,096-sample runs {big['cache_bytes']:,.0f} B (mean over seeds)"
    out.append(
        {"target": "NF4 cache of 4,096 LeNet-5 samples <= 4.2 MB", "measured": measured, "met": 4096 * per_row <= 4.2e6}
    )
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _pct1(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pct(x: dict[str, float] | float) -> str:
    if isinstance(x, dict):
        return f"{100 * x['mean']:.2f} ± {100 * x['sd']:.2f}"
    return f"{100 * x:.2f}"


def markdown(
    rows: list[dict[str, Any]], tg: list[dict[str, Any]], meta: dict[str, Any], memory: list[dict[str, Any]]
) -> str:
    lines = [
        "# On-the-fly study",
        "",
        f"Command: `{meta.get('command', '')}` ({meta.get('seeds', '?')} seeds; torch threads 1; finished {meta.get('finished', '?')}).",  # noqa: E501
        "",
        f"LeNet-5 pre-trained on MNIST (bundled checkpoint), RotMNIST streams of {meta.get('phase_length', 1000):,} "
        "samples a phase from the MNIST test "
        "split (500 held-out images per seed never enter the stream). Defaults: Forward Cache / replay capacity 1,024 "
        "samples, sliding window, adapt every 200 samples, 3 epochs per adaptation over what the memory holds, batch 20, "  # noqa: E501
        "lr 0.1, rank 4, arrivals predicted 10 at a time. Means over seeds (± sd).",
        "",
        *([f"Timings: {meta['note']}. The fixed-speed results depend on them.", ""] if meta.get("note") else []),
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |" for t in tg]
    head = (
        "| method | online acc. % | per phase % | held-out acc. after adaptations % | adaptations | "
        "adapt. time total s | latency median / p95 ms | forgetting pt | recovery samples (not reached) | cache B |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    for s in SCHEDULES:
        lines += ["", f"## {s}", "", head, sep]
        for m in METHODS:
            r = _find(rows, "main", s, m)
            if r is None:
                continue
            phases = " / ".join(f"{100 * p['online_accuracy']:.1f}" for p in r["phases"])
            rec = "-" if r["recovery_samples_mean"] is None else f"{r['recovery_samples_mean']:.0f}"
            lines.append(
                f"| {m} | {_pct(r['online_accuracy'])} | {phases} | {_pct1(r['heldout_mean'])} | {r['adaptations']:.0f} | "  # noqa: E501
                f"{r['adaptation_seconds_total']['mean']:.2f} | {_num(r['latency_ms_median'])} / {_num(r['latency_ms_p95'])} | "  # noqa: E501
                f"{100 * r['forgetting']['mean']:.1f} | {rec} ({r['recovery_not_reached']}/{r['recovery_switches']}) | "
                f"{r['cache_bytes']:,.0f} |"
            )
        if s == SCHEDULES[0]:
            lines.append("")
            lines.append(
                "Phases: " + ", ".join(p["label"] for p in _find(rows, "main", s, "none")["phases"])
                if _find(rows, "main", s, "none")
                else ""
            )
    lines += [
        "",
        "## Fixed-speed stream (one arrival per 1 ms; an adaptation's measured time decides how many arrivals the previous adapters serve)",  # noqa: E501
        "",
        "| schedule | method | online acc. % | adaptations | stale arrivals | latency median ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["group"] == "fixed_speed":
            lines.append(
                f"| {r['schedule']} | {r['method']} | {_pct(r['online_accuracy'])} | {r['adaptations']:.1f} | "
                f"{r['stale_arrivals']:.0f} | {_num(r['latency_ms_median'])} |"
            )
    lines += [
        "",
        "## Retention policy × capacity (InstantFT, NF4 cache)",
        "",
        "| schedule | policy | capacity | online acc. % | forgetting pt | cache B | rows computed | recomputed (evicted, came back) |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["group"] == "retention":
            kw = r["overrides"]
            lines.append(
                f"| {r['schedule']} | {kw['retention']} | {kw['cache_capacity']} | {_pct(r['online_accuracy'])} | "
                f"{100 * r['forgetting']['mean']:.1f} | {r['cache_bytes']:,.0f} | {r['computed']:.0f} | {r['recomputed']:.0f} |"  # noqa: E501
            )
    lines += [
        "",
        "## When to adapt (InstantFT)",
        "",
        "| schedule | trigger | online acc. % | adaptations | adapt. time total s | forgetting pt | recovery samples (not reached) |",  # noqa: E501
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["group"] == "trigger":
            kw = r["overrides"]
            parts = []
            if kw.get("adapt_every"):
                parts.append(f"every {kw['adapt_every']}")
            if kw.get("detector"):
                parts.append(f"{kw['detector']}" + (f", {kw['on_shift']} at a shift" if "on_shift" in kw else ""))
            rec = "-" if r["recovery_samples_mean"] is None else f"{r['recovery_samples_mean']:.0f}"
            lines.append(
                f"| {r['schedule']} | {' + '.join(parts)} | {_pct(r['online_accuracy'])} | {r['adaptations']:.1f} | "
                f"{r['adaptation_seconds_total']['mean']:.2f} | {100 * r['forgetting']['mean']:.1f} | "
                f"{rec} ({r['recovery_not_reached']}/{r['recovery_switches']}) |"
            )
    lines += [
        "",
        "## Another backbone: the bundled MLP (784-128-64-10, MNIST), same streams",
        "",
        "| schedule | method | online acc. % | per phase % | adapt. time total s | latency median ms | forgetting pt | cache B |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["group"] == "backbone":
            phases = " / ".join(f"{100 * p['online_accuracy']:.1f}" for p in r["phases"])
            lines.append(
                f"| {r['schedule']} | {r['method']} | {_pct(r['online_accuracy'])} | {phases} | "
                f"{r['adaptation_seconds_total']['mean']:.2f} | {_num(r['latency_ms_median'])} | "
                f"{100 * r['forgetting']['mean']:.1f} | {r['cache_bytes']:,.0f} |"
            )
    if memory:
        lines += [
            "",
            "## Peak memory (one fresh `instantft stream --schedule abrupt --json` process per method)",
            "",
            "| method | peak RSS MB | RSS before the loop MB | cache B | held images B |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {m['method']} | {m['peak_rss_mb']:.0f} | {m['rss_before_run_mb']:.0f} | {m['cache_bytes']:,} | "
            f"{m['retained_image_bytes']:,} |"
            for m in memory
        ]
    lines += [
        "",
        "Definitions: online accuracy = prequential (each sample predicted before its label is used); per phase = over the "  # noqa: E501
        "phase's samples; forgetting = held-out accuracy on the original (clean, 0°) distribution before the stream minus "  # noqa: E501
        "after it; recovery = after each switch into a fixed phase, samples until the trailing-200 accuracy over "
        "post-switch samples is within 2 pts of the phase's steady state (its second half); latency = wall time of one "
        "adaptation (cache synchronisation, base forwards of new samples, training), warm-up excluded.",
        "",
    ]
    return "\n".join(lines)


def plots(runs: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> None:
    from instantft.stream.plot import COLORS, draw

    plt = pyplot()

    def save(fig: Any, name: str) -> None:
        atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
        plt.close(fig)

    def by_method(group: str, schedule: str) -> dict[str, list[dict[str, Any]]]:
        sel: dict[str, list[dict[str, Any]]] = {}
        for m in METHODS:
            rs = [r for r in runs if r["group"] == group and r["schedule"] == schedule and r["method"] == m]
            if rs:
                sel[m] = sorted(rs, key=lambda r: r["seed"])
        return sel

    for s in SCHEDULES:
        sel = by_method("main", s)
        if sel:
            fig, ax = plt.subplots(figsize=(8, 3.6))
            draw(
                ax,
                sel,
                f"{s}: online accuracy (mean of {len(next(iter(sel.values())))} seeds); ticks: adaptations, seed 0",
            )
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fig.tight_layout()
            save(fig, f"{s}.png")
    sel = by_method("fixed_speed", "abrupt")
    if sel:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        draw(ax, sel, "abrupt, one arrival per 1 ms: stale adapters serve while an adaptation runs")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        save(fig, "fixed_speed_abrupt.png")
    # the README picture: abrupt (instant adaptation), abrupt at 1 ms, accuracy vs adaptation time
    main_abrupt, fast_abrupt = by_method("main", "abrupt"), by_method("fixed_speed", "abrupt")
    if main_abrupt and fast_abrupt:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.0), gridspec_kw={"width_ratios": [1.25, 1.25, 1]})
        draw(axes[0], main_abrupt, "abrupt 0°→90°→45°→−45°, adaptation takes no stream time", marks=True)
        draw(axes[1], fast_abrupt, "same stream, one arrival per 1 ms", marks=True)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.36, 0.0))
        ax = axes[2]
        for s, marker in (("gradual", "o"), ("abrupt", "s"), ("recurring", "^"), ("corrupt", "D")):
            for m in METHODS:
                r = _find(rows, "main", s, m)
                if r is None or m == "none":
                    continue
                ax.scatter(
                    r["adaptation_seconds_total"]["mean"],
                    100 * r["online_accuracy"]["mean"],
                    color=COLORS[m],
                    marker=marker,
                    s=28,
                    label=m if s == "gradual" else None,
                )
        for s, marker in (("gradual", "o"), ("abrupt", "s"), ("recurring", "^"), ("corrupt", "D")):
            ax.scatter([], [], color="k", marker=marker, s=20, label=s)
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("total adaptation time per stream (s)")
        ax.set_ylabel("online accuracy (%)")
        ax.set_title("accuracy vs adaptation cost, all schedules", fontsize=9, pad=14)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        save(fig, "story.png")


def report(out: Path) -> None:
    merged: dict[str, dict[str, Any]] = {}
    for f in sorted(out.glob("runs*.json")):
        for r in json.loads(f.read_text()):
            merged.setdefault(r["key"], r)
    runs = list(merged.values())
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    memory = json.loads((out / "memory.json").read_text()) if (out / "memory.json").exists() else []
    rows = aggregate(runs)
    tg = targets(rows, runs)
    atomic_write_json(out / "summary.json", {"meta": meta, "targets": tg, "rows": rows, "memory": memory})
    atomic_write_text(out / "summary.md", markdown(rows, tg, meta, memory))
    plots(runs, rows, out)
    from instantft.stream.plot import corruption_grid

    corruption_grid(out / "corruptions.png")


def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/stream.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "results" / "stream"))
    p.add_argument("--phase-length", type=int, default=1000, help="samples per phase (smaller: a quick check)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--memory-only", action="store_true", help="only the per-method peak-memory runs, then the report")
    p.add_argument("--groups", default=None, help="comma-separated groups to run (main, fixed_speed, retention, ...)")
    p.add_argument("--runs-name", default="runs.json", help="runs file (report merges every runs*.json)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--note", default="", help="a sentence on the machine, quoted beside the timings")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.seeds < 1:
            raise InstantFTError(f"--seeds must be >= 1, got {args.seeds}")
        groups = tuple(args.groups.split(",")) if args.groups else None
        if args.memory_only:
            measure_memory(out)
        elif not args.report_only:
            run_study(out, args.seeds, args.note, args.phase_length, groups, args.runs_name, args.progress)
            if not args.skip_memory:
                measure_memory(out)
        report(out)
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
