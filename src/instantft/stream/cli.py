"""``instantft stream``: one prequential run on a drifting stream, with a live display, ``--json``
and ``--plot`` (the flags are declared in :mod:`instantft.cli`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from instantft.settings import FineTuneConfig, Runtime, SettingsError
from instantft.stream.config import StreamConfig, StreamSettings


def summary_line(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    f = report["forgetting"]
    timing = "" if lat["median"] is None else f" (latency median {lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms)"
    return (
        f"online accuracy {report['online_accuracy']:.4f}; {report['adaptations']} adaptations{timing}; "
        f"cache {report['cache_bytes']:,} B; "
        f"clean accuracy {f['clean_before']:.4f} -> {f['clean_after']:.4f}"
    )


def run_command(
    settings: StreamSettings, adaptation: FineTuneConfig, runtime: Runtime, plot: Path | None, json_out: bool
) -> int:
    """``instantft stream``: every input checked before any work, then the run, live or quiet."""
    from instantft.stream.loop import run_stream

    config = StreamConfig(**settings.model_dump(exclude_unset=True), adaptation=adaptation)
    if plot is not None:
        from instantft.extras import require
        from instantft.fileio import ensure_writable

        require("plot", "matplotlib", "instantft stream --plot")  # before the stream, not after it
        if plot.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise SettingsError("plot", f"must end in .png, .pdf or .svg, got {str(plot)!r}")
        plot = ensure_writable(plot)
    live = not json_out and sys.stdout.isatty()
    report = _run_live(config, runtime) if live else run_stream(config, runtime=runtime)
    if plot is not None:
        from instantft.stream.plot import plot_runs

        plot_runs({config.method: [report]}, plot, title=f"{config.dataset} {config.schedule}")
    if json_out:
        print(json.dumps(report))
    else:
        print(summary_line(report))
        for p in report["phases"]:
            print(
                f"  phase {p['label']:<16} samples {p['start']}-{p['end']}: online accuracy {p['online_accuracy']:.4f}"
            )
        if plot is not None:
            print(f"plot written to {plot}")
    return 0


def _run_live(config: StreamConfig, runtime: Runtime) -> dict[str, Any]:
    from rich.live import Live
    from rich.table import Table

    from instantft.stream.loop import Progress, run_stream

    def table(p: Progress | None) -> Table:
        t = Table(title=f"instantft stream: {config.method} on {config.dataset} / {config.schedule}")
        for col in ("arrivals", "phase", f"acc. last {config.window}", "acc. all", "adapt.", "last adapt.", "stale"):
            t.add_column(col)
        if p is not None:
            last = "-" if p.last_latency_ms is None else f"{p.last_latency_ms:.1f} ms"
            t.add_row(f"{p.done}/{p.total}", p.phase, f"{p.running_accuracy:.3f}", f"{p.accuracy:.3f}",
                      str(p.adaptations), last, str(p.stale))  # fmt: skip
        return t

    with Live(table(None), refresh_per_second=8, transient=False) as live:
        count = [0]

        def update(p: Progress) -> None:
            count[0] += 1
            if count[0] % 5 == 0 or p.done == p.total:
                live.update(table(p))

        return run_stream(config, on_progress=update, runtime=runtime)
