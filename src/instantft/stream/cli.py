"""``instantft stream``: one prequential run on a drifting stream, with a live display, ``--json``
and ``--plot``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from instantft.errors import InstantFTError

Sub = Any


def _capacity(text: str) -> str:
    return text


def config_from_args(args: argparse.Namespace) -> Any:
    from instantft.stream.loop import StreamConfig

    adapt_every = args.adapt_every
    if adapt_every is None and args.detector is None:
        adapt_every = 200
    return StreamConfig(
        dataset=args.dataset,
        schedule=args.schedule,
        method=args.method,
        cache_capacity=args.cache_capacity,
        retention=args.retention,
        adapt_every=adapt_every,
        detector=args.detector,
        detect_on=args.detect_on,
        on_shift=args.on_shift,
        arrival_ms=args.arrival_ms,
        seed=args.seed,
        phase_length=args.phase_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        arrival_batch=args.arrival_batch,
        heldout=args.heldout,
        window=args.window,
        engine=args.engine,
        backbone=args.backbone,
        data_dir=args.data_dir,
    )


def summary_line(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    f = report["forgetting"]
    timing = "" if lat["median"] is None else f" (latency median {lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms)"
    return (
        f"online accuracy {report['online_accuracy']:.4f}; {report['adaptations']} adaptations{timing}; "
        f"cache {report['cache_bytes']:,} B; "
        f"clean accuracy {f['clean_before']:.4f} -> {f['clean_after']:.4f}"
    )


def cmd_stream(args: argparse.Namespace) -> int:
    import torch

    from instantft.stream.loop import run_stream

    config = config_from_args(args)  # every input checked here, before any work
    plot = None
    if args.plot:
        from instantft.fileio import ensure_writable

        plot = ensure_writable(args.plot)
        if plot.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise InstantFTError(f"--plot must end in .png, .pdf or .svg, got {args.plot!r}")
    if args.threads is not None:
        if args.threads < 1:
            raise InstantFTError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    live = not args.json and sys.stdout.isatty()
    report = _run_live(config) if live else run_stream(config)
    if plot is not None:
        from instantft.stream.plot import plot_runs

        plot_runs({config.method: [report]}, plot, title=f"{config.dataset} {config.schedule}")
    if args.json:
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


def _run_live(config: Any) -> dict[str, Any]:
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

        return run_stream(config, on_progress=update)


def add_stream(sub: Sub) -> None:
    p = sub.add_parser(
        "stream",
        help="prequential on-the-fly adaptation on a drifting stream (issue 11)",
        description="Test-then-train on a drifting stream with a bounded Forward Cache.",
    )
    p.add_argument("--data-dir", default=os.environ.get("INSTANTFT_DATA"), help="where dataset files are looked for")
    p.add_argument("--dataset", default="rotmnist", help="rotmnist or rotfmnist")
    p.add_argument(
        "--schedule",
        default="abrupt",
        help="gradual | abrupt | recurring | corrupt, or a spec such as 'rot(0):500,(rot(90):500,shot_noise:500)*2'",
    )
    p.add_argument("--method", default="instantft", help="none, ft-last, lora-all, skip-lora, skip2-lora, instantft")
    p.add_argument("--cache-capacity", type=_capacity, default="1024", help="samples (1024) or bytes (4MB, 512KiB)")
    p.add_argument("--retention", default="window", help="window (sliding) or reservoir")
    p.add_argument(
        "--adapt-every", type=int, default=None, help="adapt every M samples (default 200 without a detector)"
    )
    p.add_argument("--detector", default=None, help="adwin or page-hinkley (river): adapt on a drift signal")
    p.add_argument("--detect-on", default="error", help="what the detector watches: error or loss")
    p.add_argument("--on-shift", default="keep", help="keep or reset the adapters at a detected rise of the error")
    p.add_argument("--arrival-ms", type=float, default=None, help="fixed-speed stream: one arrival every Δ ms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase-length", type=int, default=1000, help="samples per phase of the named schedules (L)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each adaptation over what the cache holds")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--arrival-batch", type=int, default=10, help="arrivals predicted together")
    p.add_argument("--heldout", type=int, default=500, help="held-out images for the per-adaptation accuracy")
    p.add_argument("--window", type=int, default=200, help="window of the running accuracy")
    p.add_argument("--engine", default="auto", help="skip methods' training loop: auto, c, reference")
    p.add_argument("--backbone", default="lenet5", help="bundled pre-trained backbone family: lenet5 (paper), mlp")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--json", action="store_true", help="print one JSON object, no live display")
    p.add_argument("--plot", default=None, help="write a plot of the windowed accuracy (PNG/PDF/SVG)")
    p.set_defaults(func=cmd_stream)


def main(argv: list[str] | None = None) -> int:
    """``instantft stream`` on its own (``python -m instantft.stream.cli``): the same one-line
    errors and exit status 2 as the ``instantft`` command."""
    parser = argparse.ArgumentParser(prog="instantft")
    add_stream(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stream", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
