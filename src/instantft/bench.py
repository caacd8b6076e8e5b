"""``instantft bench``: how fast each method fine-tunes, and how far that is from the CPU's limit.

Cut down to what is timed (as nanoGPT's ``bench.py``): every method fine-tunes the same RotMNIST
samples (10 epochs, batch 20, same seed and batch order) side by side in one process, at one
thread count for all of them: a warm-up run each, then ``repeats`` rounds that run every row once,
in turn. A run is ``method.fit()`` end to end (for Skip2-LoRA and InstantFT: filling the Forward
Cache, encoding it, training). Each run is timed in CPU time (``time.process_time``, all threads
of the process: repeatable on a shared machine) and in wall time; rows report medians and their
spread (interquartile range ÷ median). A ratio is printed only between rows whose spread is
within ``max_spread``; otherwise the row is flagged and the ratio left out.

Also: the frozen forward of the run's images by the C core (what the fill computes) beside torch's
``inference_mode`` forward at the same threads; the FLOP limit of skip2-lora (its FLOPs ÷ the sgemm
rate measured here at the same threads, best of the rounds); the NF4 overhead (InstantFT ÷
Skip2-LoRA − 1). Comparisons with other software (ONNX Runtime, PEFT, instruction counts) are
studies of a source checkout: ``studies/c_core.py``, ``studies/peft_lora.py``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
from cyclopts import Parameter
from pydantic import Field

from instantft.backbones import Backbone
from instantft.data import ImageSet, make_task
from instantft.machine import cpu_model, torch_threads
from instantft.methods import create
from instantft.run import config_for, load_backbone
from instantft.settings import TASK_SAMPLES, Runtime, Settings, max_threads

#: (row, registered method, engine): every method on its default engine, the cached ones on both
ROWS: tuple[tuple[str, str, str], ...] = (
    ("lora-all", "lora-all", "auto"),
    ("ft-all", "ft-all", "auto"),
    ("skip-lora", "skip-lora", "auto"),
    ("skip2-lora", "skip2-lora", "c"),
    ("instantft", "instantft", "c"),
    ("skip2-lora[reference]", "skip2-lora", "reference"),
    ("instantft[reference]", "instantft", "reference"),
)


#: the ratios the bench reports, numerator ÷ denominator
PAIRS = (("lora-all", "skip2-lora"), ("lora-all", "instantft"), ("instantft", "skip2-lora"),
         ("skip2-lora[reference]", "skip2-lora"))  # fmt: skip


class BenchSettings(Settings):
    """What the bench times and how often."""

    samples: Annotated[int, Field(ge=40, le=10_000)] = TASK_SAMPLES
    """Fine-tuning samples (RotMNIST 90°)."""
    repeats: Annotated[int, Field(ge=1, le=1000)] = 5
    """Timed rounds after the warm-up; every row runs once a round."""
    threads: Annotated[int, Field(ge=1)] = 1
    """Threads for every row, torch's and the C core's alike."""
    max_spread: Annotated[float, Field(gt=0, le=10)] = 0.25
    """A row whose interquartile range exceeds this fraction of its median is flagged, and no ratio is taken from it."""


def _spread(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[2] - q[0]) / max(statistics.median(values), 1e-12)


def _summary(cpu: list[float], wall: list[float], bound: float) -> dict[str, Any]:
    c, w = _spread(cpu), _spread(wall)
    return {"cpu_seconds": statistics.median(cpu), "wall_seconds": statistics.median(wall), "cpu_spread": c,
            "wall_spread": w, "cpu_stable": c <= bound, "wall_stable": w <= bound, "cpu_runs": cpu, "wall_runs": wall}


def _timed(make: Callable[[], Any], data: ImageSet) -> tuple[float, float, Any]:
    """(CPU seconds, wall seconds, fit result) of one ``fit``; building the method is not timed."""
    method = make()
    gc.collect()
    c, w = time.process_time(), time.perf_counter()
    result = method.fit(data)
    return time.process_time() - c, time.perf_counter() - w, result


def sgemm_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Best fp32 matmul rate (GFLOP/s) of n×n×n on ``threads`` torch threads."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    best = float("inf")
    with torch_threads(threads):
        for i in range(repeats + 3):
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            if i >= 3:
                best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def skip_flops(backbone: Backbone, samples: int, steps: int, batch: int, rank: int) -> int | None:
    """FLOPs of a Skip2-LoRA run: one frozen forward per sample (the C chain's count), then per
    step h = A x, B h, ∂B, g·B and ∂A over every adapter."""
    from instantft.engine.chain import chain_for, flops_per_sample

    chain = chain_for(backbone)
    if chain is None:
        return None
    d, k, c = sum(backbone.sizes), len(backbone.sizes), backbone.num_classes
    return samples * flops_per_sample(chain) + 2 * steps * batch * (2 * rank * d + 3 * k * c * rank)


def forward_times(backbone: Backbone, data: ImageSet, s: BenchSettings) -> dict[str, Any] | None:
    """The frozen forward of the run's images: the C chain's cache fill beside torch's
    ``inference_mode`` forward, same threads, interleaved rounds (CPU and wall medians)."""
    import numpy as np

    from instantft.engine.chain import chain_for

    chain = chain_for(backbone)
    if chain is None:
        return None
    x = data.images.contiguous()
    rows = np.empty((len(x), chain.row_width), np.float32)
    calls = {"c_fill": lambda: chain.fill(x.numpy(), rows, s.threads), "torch_inference": lambda: backbone.model(x)}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    wall: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode(), torch_threads(s.threads):
        for f in calls.values():
            f()
        for _ in range(s.repeats):
            for name, f in calls.items():
                c, w = time.process_time(), time.perf_counter()
                f()
                cpu[name].append(time.process_time() - c)
                wall[name].append(time.perf_counter() - w)
    return {name: _summary(cpu[name], wall[name], s.max_spread) for name in calls}


def _ratio(rows: dict[str, dict[str, Any]], a: str, b: str, key: str) -> float | None:
    """rows[a] ÷ rows[b] in CPU or wall seconds, or None when either is missing or that timing of
    either is flagged unstable."""
    ra, rb = rows.get(a), rows.get(b)
    stable = key.replace("seconds", "stable")
    if ra is None or rb is None or not (ra[stable] and rb[stable]):
        return None
    return ra[key] / rb[key]


def run_bench(s: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Every row, interleaved; then the forward, the FLOP limit and the ratios."""
    from instantft.engine import c_available

    model, _ = load_backbone("rotmnist")
    data = make_task("rotmnist", angle=90.0, samples=s.samples, seed=0, eval_samples=100).finetune
    config = config_for("rotmnist")
    rows = [r for r in ROWS if r[2] != "c" or c_available()]
    makers = {row: (lambda m=m, e=e: create(m, model, config, runtime=Runtime(engine=e))) for row, m, e in rows}
    cpu: dict[str, list[float]] = {r: [] for r in makers}
    wall: dict[str, list[float]] = {r: [] for r in makers}
    load_before = os.getloadavg()
    with torch_threads(s.threads):
        fits = {row: _timed(make, data)[2] for row, make in makers.items()}  # warm-up
        for rnd in range(s.repeats):
            log(f"round {rnd + 1}/{s.repeats}")
            for row, make in makers.items():
                c, w, _ = _timed(make, data)
                cpu[row].append(c)
                wall[row].append(w)
    methods = {row: {**_summary(cpu[row], wall[row], s.max_spread), "steps": fits[row].steps,
                     "cache_bytes": fits[row].cache_bytes} for row in makers}  # fmt: skip
    log("frozen forward: C fill vs torch")
    backbone = Backbone(model)
    forward = forward_times(backbone, data, s)
    gflops = sgemm_gflops(s.threads)
    flops = skip_flops(backbone, len(data), methods["skip2-lora"]["steps"], config.batch_size, config.rank)
    limit = None if flops is None else flops / (gflops * 1e9)
    ratios = {
        f"{key.split('_')[0]} {a} ÷ {b}": _ratio(methods, a, b, key)
        for key in ("cpu_seconds", "wall_seconds")
        for a, b in PAIRS
    }
    if forward is not None:
        for key in ("cpu_seconds", "wall_seconds"):
            ratios[f"{key.split('_')[0]} c_fill ÷ torch_inference"] = _ratio(forward, "c_fill", "torch_inference", key)
    if limit is not None and methods["skip2-lora"]["cpu_stable"]:
        ratios["cpu skip2-lora ÷ FLOP limit"] = methods["skip2-lora"]["cpu_seconds"] / limit
    setup = {"samples": len(data), "epochs": config.epochs, "batch_size": config.batch_size, "repeats": s.repeats,
             "max_spread": s.max_spread}  # fmt: skip
    machine = {"cpu": cpu_model(), "threads": s.threads, "cpus": max_threads(),
               "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}  # fmt: skip
    return {
        "setup": setup,
        "machine": machine,
        "methods": methods,
        "forward": forward,
        "sgemm_gflops": gflops,
        "skip2_lora_flops": flops,
        "flop_limit_seconds": limit,
        "ratios": ratios,
    }


def markdown(out: dict[str, Any]) -> str:
    """The report as Markdown (what ``--markdown`` writes)."""
    m = out["machine"]
    lines = [
        f"# instantft bench: {m['cpu']}, {m['threads']} thread(s) for every row",
        "",
        f"{out['setup']['samples']} RotMNIST 90° samples, {out['setup']['epochs']} epochs, batch "
        f"{out['setup']['batch_size']}; medians of {out['setup']['repeats']} interleaved rounds. Load average "
        f"{m['load_average_before'][0]:.2f} before, {m['load_average_after'][0]:.2f} after ({m['cpus']} CPUs). "
        f"Spread = interquartile range ÷ median; above {out['setup']['max_spread']:g} a row is flagged and "
        "no ratio is taken from it.",
        "",
        "| row | CPU s | wall s | CPU spread | wall spread |",
        "|---|---:|---:|---:|---:|",
    ]
    table = {**out["methods"], **{f"forward: {k}": v for k, v in (out["forward"] or {}).items()}}
    for name, r in table.items():
        flag = {k: "" if r[f"{k}_stable"] else " (flagged)" for k in ("cpu", "wall")}
        cells = [f"{r['cpu_seconds']:.4f}", f"{r['wall_seconds']:.4f}", f"{r['cpu_spread']:.2f}{flag['cpu']}",
                 f"{r['wall_spread']:.2f}{flag['wall']}"]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {'flagged' if v is None else f'{v:.3g}'} |" for k, v in out["ratios"].items()]
    if out["flop_limit_seconds"] is not None:
        mflop, rate, limit = out["skip2_lora_flops"] / 1e6, out["sgemm_gflops"], out["flop_limit_seconds"]
        lines += ["", f"FLOP limit of skip2-lora: {mflop:,.1f} MFLOP at {rate:.1f} GFLOP/s (sgemm) = {limit:.4f} s."]
    return "\n".join(lines) + "\n"


def bench(
    *,
    settings: Annotated[BenchSettings, Parameter(name="*")] = BenchSettings(),  # noqa: B008
    markdown_out: Annotated[Path | None, Parameter(name="--markdown")] = None,
    json_out: Annotated[bool, Parameter(name="--json", negative="")] = False,
) -> int:
    """Time the engines' fine-tunes against LoRA-All and the frozen forward, with CPU and wall time.

    Parameters
    ----------
    markdown_out
        Also write the report as Markdown to this file.
    json_out
        Print one JSON object (no progress lines, no table).
    """
    from instantft.fileio import atomic_write_text, ensure_writable

    if settings.threads > max_threads():
        from instantft.settings import SettingsError

        raise SettingsError("threads", f"must be <= {max_threads()} (the CPUs this process may use)")
    target = ensure_writable(markdown_out) if markdown_out is not None else None
    log = (lambda msg: None) if json_out else (lambda msg: print(msg, file=sys.stderr))
    out = run_bench(settings, log)
    if target is not None:
        atomic_write_text(target, markdown(out))
    print(json.dumps(out) if json_out else markdown(out))
    return 0
