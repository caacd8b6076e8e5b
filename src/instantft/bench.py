"""``instantft bench``: how fast each method fine-tunes, and how far that is from the CPU's limit.

Cut down to what is timed (as nanoGPT's ``bench.py``): every method fine-tunes the same RotMNIST
samples (10 epochs, batch 20, same seed and batch order), side by side in one process - one
warm-up run each, then ``--repeats`` rounds that run every method once, in turn - and we quote
medians. A run is ``method.fit()`` end to end: for Skip2-LoRA/InstantFT that includes filling the
Forward Cache and quantising it. Then:

- the FLOP limit: the run's FLOPs ÷ the sgemm rate measured in this process with the same
  threads (best of the rounds: the conservative choice for a "× of the limit" claim);
- the NF4 overhead (InstantFT ÷ Skip2-LoRA − 1);
- cold start: the first fine-tune in a fresh process (imports of the engine and numba's cache
  load included), and the first compile ever (an empty numba cache);
- scaling: time per sample from 1k to 73k samples (synthetic MNIST-shaped images past the
  10,000 test images of RotMNIST), with the NF4 cache size;
- the fill: the frozen forward of the run's images by the C core (all threads and one) beside
  torch's eager forward.

Baselines run their ordinary training loop (module forward, autograd, ``torch.optim.SGD``). This
measures the package alone; the comparisons with other software (ONNX Runtime, PEFT, instruction
counts under callgrind) are studies of a source checkout: ``studies/c_core.py`` and
``studies/peft_lora.py``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instantft.data import ImageSet, make_task
from instantft.engine import numba_available, resolve_engine
from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, create
from instantft.models import LeNet5, accuracy
from instantft.run import config_for, load_backbone

#: (row name, registered method, engine); the rows without "[...]" are the headline ones
ROWS: tuple[tuple[str, str, str], ...] = (
    ("lora-all", "lora-all", "auto"),
    ("ft-all", "ft-all", "auto"),
    ("skip-lora", "skip-lora", "auto"),
    ("skip2-lora", "skip2-lora", "auto"),
    ("instantft", "instantft", "auto"),
    ("skip2-lora[c]", "skip2-lora", "c"),
    ("instantft[c]", "instantft", "c"),
    ("skip2-lora[numba]", "skip2-lora", "numba"),
    ("instantft[numba]", "instantft", "numba"),
    ("skip2-lora[torch]", "skip2-lora", "torch"),
    ("instantft[torch]", "instantft", "torch"),
    ("skip2-lora[reference]", "skip2-lora", "reference"),
    ("instantft[reference]", "instantft", "reference"),
)
SCALING_SIZES = (1024, 4096, 16384, 73257)


# --- FLOPs ------------------------------------------------------------------------------------


def _make(name: str, model: Any, config: Any) -> Any:
    """A fresh method (bench builds one per timed run)."""
    from instantft.methods import create

    return create(name, model, config)


def base_forward_macs(model: LeNet5) -> int:
    """Multiply-accumulates of one frozen forward pass (conv and linear layers)."""
    c = model.config
    o1 = c.image_size + 2 * c.conv1_padding - 4
    o2 = o1 // 2 - 4
    macs = model.conv1.weight.numel() * o1 * o1 + model.conv2.weight.numel() * o2 * o2
    return macs + sum(layer.weight.numel() for layer in (model.fc1, model.fc2, model.fc3))


def skip_run_flops(model: LeNet5, config: FineTuneConfig, samples: int, steps: int, per_step: int) -> int:
    """FLOPs (2 per MAC) of a Skip2-LoRA/InstantFT run: one base forward per sample to fill the
    cache, then per step h = A x, B h, ∂B, g B and ∂A over all five adapters."""
    d = sum(model.layer_input_sizes())
    k, c, r = 5, model.config.num_classes, config.rank
    step_macs = per_step * (2 * r * d + 3 * k * c * r)
    return 2 * (samples * base_forward_macs(model) + steps * step_macs)


def autograd_run_flops(model: LeNet5, method: str, config: FineTuneConfig, samples_seen: int) -> int | None:
    """A baseline's FLOPs: the per-sample forward + backward of :mod:`instantft.analysis.costs`
    (the Table 1 counts, without the unused adapter input gradients) × samples trained on."""
    try:
        from instantft.analysis.costs import costs, describe, plan_of

        c = costs(describe(model), plan_of(create(method, model, config)))
    except Exception:
        return None
    return samples_seen * (c.forward_flops + c.backward_flops_required)


def sgemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Best fp32 matmul rate (GFLOP/s) of n×n×n with the current torch threads."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# --- runs -------------------------------------------------------------------------------------
def engine_ok(engine: str) -> bool:
    """An engine row is run when its engine is installed (and a torch row only beside a faster one)."""
    try:
        resolve_engine(engine)
    except InstantFTError:
        return False
    return not (engine == "torch" and resolve_engine("auto") == "torch")


def timed_fit(make: Callable[[], Any], data: ImageSet) -> tuple[float, Any, Any]:
    """(seconds, fit result, fitted method) of one ``fit`` call; building the method is not timed."""
    method = make()
    gc.collect()
    start = time.perf_counter()
    result = method.fit(data)
    return time.perf_counter() - start, result, method


def synthetic_set(n: int, like: ImageSet, seed: int = 0) -> ImageSet:
    """n random images of ``like``'s shape and random labels (only the shapes matter for time)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, *like.images.shape[1:], generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageSet(f"synthetic-{n}", images, labels, torch.arange(n))


# --- the fill --------------------------------------------------------------------------------
def forward_times(
    model: torch.nn.Module,
    data: ImageSet,
    threads: int,
    repeats: int,
    log: Callable[[str], None],
    peers: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """The frozen forward of the run's images (what the cache fill computes), interleaved rounds,
    median ms: the C core on ``threads`` and on one thread, numba's fill where it runs, torch's
    eager forward, and any ``peers`` (name -> a call doing the same work)."""
    from instantft.backbones import Backbone
    from instantft.engine import cengine
    from instantft.engine.chain import chain_for, flops_per_sample

    backbone = Backbone(model)
    chain = chain_for(backbone)
    out: dict[str, Any] = {"kernels": cengine.build_info() if cengine.available() else None}
    if chain is None:
        return out
    images = data.images.contiguous()
    x = images.numpy()
    rows = np.empty((len(x), chain.row_width), np.float32)
    calls: dict[str, Callable[[], Any]] = {
        "c_fill": lambda: chain.fill(x, rows, threads),
        "c_fill_1_thread": lambda: chain.fill(x, rows, 1),
        "torch_eager": lambda: model(images),
        **(peers or {}),
    }
    if numba_available():
        from instantft.engine.fill import compiled_rows_into, lenet_fast_path

        if lenet_fast_path(backbone):
            out_rows = torch.empty(len(x), chain.row_width)
            calls["numba_fill"] = lambda: compiled_rows_into(backbone, images, out_rows)
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for f in calls.values():  # warm-up (first calls, allocations)
            f()
        for rnd in range(repeats):
            log(f"frozen forward round {rnd + 1}/{repeats}")
            for name, f in calls.items():
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
    out["forward_ms"] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    out["forward_runs_ms"] = {k: [1e3 * t for t in v] for k, v in times.items()}
    out["forward_flops"] = flops_per_sample(chain) * len(x)
    return out


# --- cold start -------------------------------------------------------------------------------
COLD_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads({threads})
from instantft.methods import create
from instantft.run import config_for, load_backbone
from instantft.data import make_task
model, _ = load_backbone("rotmnist", {checkpoint!r})
task = make_task("rotmnist", angle={angle}, samples={samples}, seed=0, data_dir={data_dir!r})
config = config_for("rotmnist")
out = {{}}
for name in ("skip2-lora", "instantft"):
    times = []
    for _ in range(2):
        m = create(name, model, config)
        t = time.perf_counter()
        m.fit(task.finetune)
        times.append(time.perf_counter() - t)
    out[name] = {{"first": times[0], "second": times[1]}}
print(json.dumps(out))
"""


def cold_start(args: argparse.Namespace, empty_numba_cache: bool) -> dict[str, Any] | None:
    """First and second fine-tune of skip2-lora then instantft in a fresh Python process."""
    script = COLD_SCRIPT.format(
        threads=args.threads, checkpoint=args.checkpoint, angle=args.angle, samples=args.samples, data_dir=args.data_dir
    )
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if empty_numba_cache:
            env["NUMBA_CACHE_DIR"] = tmp
        try:
            proc = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the benchmark ----------------------------------------------------------------------------
def machine(threads: int) -> dict[str, Any]:
    from instantft.machine import machine_info

    info = machine_info()
    info["threads"] = threads
    if numba_available():
        from instantft.engine import kernels

        try:  # where numba keeps the compiled kernels (beside the package, or a user cache dir)
            info["numba_cache_dir"] = str(kernels.train_fp32._cache._cache_path)  # type: ignore[attr-defined]
        except AttributeError:
            info["numba_cache_dir"] = None
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine shows up in every timing."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_before = load_average()
    loaded, meta = load_backbone("rotmnist", args.checkpoint)
    if not isinstance(loaded, LeNet5):
        raise InstantFTError("instantft bench times the paper's LeNet-5; --checkpoint must hold one")
    model = loaded
    task = make_task("rotmnist", angle=args.angle, samples=args.samples, seed=0, data_dir=args.data_dir)
    data, evaluate = task.finetune, task.evaluate
    config = config_for("rotmnist")
    rows = [r for r in ROWS if engine_ok(r[2])]
    makers: dict[str, Callable[[], Any]] = {
        row: functools.partial(_make, name, model, replace(config, engine=engine))  # type: ignore[arg-type]
        for row, name, engine in rows
    }
    log(f"warm-up: {', '.join(makers)}")
    results: dict[str, dict[str, Any]] = {}
    for row, make in makers.items():
        _, fit, method = timed_fit(make, data)
        results[row] = {"runs": [], "steps": fit.steps, "cache_bytes": getattr(fit, "cache_bytes", 0)}
        results[row]["accuracy"] = accuracy(method.logits(evaluate.images), evaluate.labels)
    gflops: list[float] = []
    for rnd in range(args.repeats):
        log(f"round {rnd + 1}/{args.repeats}")
        gflops.append(sgemm_gflops())
        for row, make in makers.items():
            results[row]["runs"].append(timed_fit(make, data)[0])
    sgemm = max(gflops)
    steps = results["skip2-lora"]["steps"]
    flops = {
        row: skip_run_flops(model, config, len(data), results[row]["steps"], config.batch_size)
        if name in ("skip2-lora", "instantft")
        else autograd_run_flops(model, name, config, results[row]["steps"] * config.batch_size)
        for row, name, _ in rows
    }
    lora_all = statistics.median(results["lora-all"]["runs"])
    methods: dict[str, dict[str, Any]] = {}
    for row, r in results.items():
        sec = statistics.median(r["runs"])
        f = flops.get(row)
        methods[row] = {
            "seconds": sec,
            "ms_per_step": 1e3 * sec / r["steps"],
            "speedup_vs_lora_all": lora_all / sec,
            "flop_limit_multiple": sec / (f / (sgemm * 1e9)) if f else None,
            "flops": f,
            "accuracy": r["accuracy"],
            "steps": r["steps"],
            "cache_bytes": r["cache_bytes"],
            "runs": r["runs"],
        }
    log("cold start (fresh process)")
    cold = cold_start(args, empty_numba_cache=False)
    compile_ = cold_start(args, empty_numba_cache=True) if args.compile_check and numba_available() else None
    log("scaling")
    scaling = scale(model, config, data, args, log)
    core: dict[str, Any] | None = None
    if "skip2-lora[c]" in makers:
        log("C core: skip2-lora[c] on one thread")
        torch.set_num_threads(1)
        one = [timed_fit(makers["skip2-lora[c]"], data)[0] for _ in range(args.repeats)]
        torch.set_num_threads(args.threads)
        log("C core: the frozen forward beside torch's")
        core = forward_times(model, data, args.threads, args.repeats, log)
        core["skip2_lora_c_1_thread_seconds"] = statistics.median(one)
        core["skip2_lora_c_1_thread_runs"] = one
    skip2, inst = methods["skip2-lora"]["seconds"], methods["instantft"]["seconds"]
    out = {
        "methods": methods,
        "flop_limit_seconds": (flops["skip2-lora"] or 0) / (sgemm * 1e9),
        "sgemm_gflops": sgemm,
        "sgemm_gflops_rounds": gflops,
        "nf4_overhead": inst / skip2 - 1,
        "cold_start_seconds": cold["skip2-lora"]["first"] if cold else None,
        "cold_start": cold,
        "first_compile": compile_,
        "scaling": scaling,
        "core": core,
        "machine": {**machine(args.threads), "load_average_before": load_before, "load_average_after": load_average()},
        "setup": {
            "dataset": "rotmnist",
            "angle": args.angle,
            "samples": len(data),
            "eval_samples": len(evaluate),
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "rank": config.rank,
            "steps": steps,
            "repeats": args.repeats,
            "engine": resolve_engine("auto"),
            "backbone_sha256": meta.get("weights_sha256"),
            "command": " ".join(["instantft", *sys.argv[1:]]),
        },
    }
    out["targets"] = targets(out)
    out["targets_c_core"] = targets_c_core(out)
    return out


def scale(model: LeNet5, config: FineTuneConfig, data: ImageSet, args: argparse.Namespace, log: Callable) -> list:
    """Skip2-LoRA and InstantFT time per sample·epoch from 1k to 73k samples."""
    out = []
    for n in args.scaling:
        if n <= len(data):
            subset, kind = data.subset(slice(0, n)), "rotmnist"
        elif n < 10_000:
            subset = make_task("rotmnist", angle=args.angle, samples=n, seed=0, data_dir=args.data_dir).finetune
            kind = "rotmnist"
        else:
            subset, kind = synthetic_set(n, data), "synthetic"
        subset.fingerprint  # noqa: B018  (hash the data once, outside the timed runs)
        log(f"scaling {n} ({kind})")
        for name in ("skip2-lora", "instantft"):
            runs, fit = [], None
            for _ in range(max(1, min(args.repeats, 3))):
                seconds, fit, _m = timed_fit(functools.partial(_make, name, model, config), subset)
                runs.append(seconds)
                del _m
            sec = statistics.median(runs)
            out.append(
                {
                    "method": name,
                    "samples": n,
                    "data": kind,
                    "seconds": sec,
                    "us_per_sample_epoch": 1e6 * sec / (n * config.epochs),
                    "cache_bytes": fit.cache_bytes if fit is not None else 0,
                    "runs": runs,
                }
            )
            gc.collect()
    return out


def _judge(rows: dict[str, tuple[float | None, float, str]]) -> dict[str, Any]:
    result = {}
    for name, (value, bound, how) in rows.items():
        met = None if value is None else (value >= bound if how == "ge" else value <= bound)
        result[name] = {"value": value, "met": met, "bound": bound, "how": how}
    return result


def targets_c_core(out: dict[str, Any]) -> dict[str, Any]:
    """The C core's targets that this process measures (the device program's are the device
    tests' business), each with the measured value and whether it is met; the ONNX Runtime rows
    stay unmeasured here (studies/c_core.py adds that peer)."""
    m, core = out["methods"], out.get("core") or {}
    fwd = core.get("forward_ms") or {}

    def sec(row: str) -> float | None:
        return m[row]["seconds"] if row in m else None

    c2, n2, i2 = sec("skip2-lora[c]"), sec("skip2-lora[numba]"), sec("instantft[c]")
    fill, ort = fwd.get("c_fill"), fwd.get("onnxruntime")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    c1 = core.get("skip2_lora_c_1_thread_seconds")
    rows: dict[str, tuple[float | None, float, str]] = {
        "C engine vs numba, skip2-lora end to end (x faster) >= 1.5": (ratio(n2, c2), 1.5, "ge"),
        "fine-tune / inference-only (C fill, same threads) <= 1.3": (ratio(None if c2 is None else 1e3 * c2, fill), 1.3,
                                                                     "le"),
        "frozen forward vs ONNX Runtime (x faster) >= 1.0": (ratio(ort, fill), 1.0, "ge"),
        "whole fine-tune / ONNX Runtime inference <= 1.5": (ratio(None if c2 is None else 1e3 * c2, ort), 1.5, "le"),
        "skip2-lora x of FLOP limit <= 3": (m.get("skip2-lora[c]", {}).get("flop_limit_multiple"), 3.0, "le"),
        "NF4 overhead (instantft[c] / skip2-lora[c] - 1) <= 0.05": (
            None if i2 is None or c2 is None else i2 / c2 - 1, 0.05, "le"),
        "fresh process -> first fine-tune (s, import excluded) <= 0.05": (out.get("cold_start_seconds"), 0.05, "le"),
    }  # fmt: skip
    result = _judge(rows)
    result["1 -> 2 threads, skip2-lora[c] end to end (x)"] = {"value": ratio(c1, c2), "met": None}
    result["1 -> 2 threads, C fill (x)"] = {"value": ratio(fwd.get("c_fill_1_thread"), fill), "met": None}
    return result


def targets(out: dict[str, Any]) -> dict[str, Any]:
    """The engines' speed targets, each with the measured value and whether it is met."""
    m = out["methods"]
    scaling = [s for s in out["scaling"] if s["method"] == "instantft"]
    nf4_73k = next((s["cache_bytes"] for s in scaling if s["samples"] == 73257), None)
    rows = {
        "skip2-lora speedup vs lora-all >= 40": (m["skip2-lora"]["speedup_vs_lora_all"], 40, "ge"),
        "skip2-lora speedup vs ft-all >= 40": (m["ft-all"]["seconds"] / m["skip2-lora"]["seconds"], 40, "ge"),
        "instantft speedup vs lora-all >= 35": (m["instantft"]["speedup_vs_lora_all"], 35, "ge"),
        "instantft speedup vs ft-all >= 35": (m["ft-all"]["seconds"] / m["instantft"]["seconds"], 35, "ge"),
        "skip2-lora x of FLOP limit <= 5": (m["skip2-lora"]["flop_limit_multiple"], 5, "le"),
        "nf4 overhead <= 0.10": (out["nf4_overhead"], 0.10, "le"),
        "cold start seconds <= 1": (out["cold_start_seconds"], 1.0, "le"),
        "nf4 cache for 73,257 samples <= 75 MB": (nf4_73k, 75e6, "le"),
    }
    result = {}
    for name, (value, bound, how) in rows.items():
        met = None if value is None else (value >= bound if how == "ge" else value <= bound)
        result[name] = {"value": value, "met": met}
    return result


# --- output -----------------------------------------------------------------------------------
def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(out: dict[str, Any]) -> str:
    mc, setup = out["machine"], out["setup"]
    lines = [
        "# instantft bench",
        "",
        f"RotMNIST {setup['angle']:g}°, {setup['samples']} samples, {setup['epochs']} epochs, batch "
        f"{setup['batch_size']} ({setup['steps']} steps), rank {setup['rank']}, lr {setup['lr']}; median of "
        f"{setup['repeats']} interleaved rounds after a warm-up; end to end (cache fill and quantisation included).",
        "",
        f"Machine: {mc.get('cpu')}, {mc.get('cores')} cores, {mc.get('threads')} threads; torch {mc.get('torch')}, "
        f"numba {mc.get('numba')}; engine `{setup['engine']}`; load average before/after "
        f"{mc.get('load_average_before')} / {mc.get('load_average_after')}.",
        "",
        "| method | seconds | ms/step | × vs lora-all | × of FLOP limit | accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in out["methods"].items():
        lines.append(
            f"| {name} | {m['seconds']:.4f} | {m['ms_per_step']:.3f} | {m['speedup_vs_lora_all']:.1f} | "
            f"{_fmt(m['flop_limit_multiple'], '.1f')} | {100 * m['accuracy']:.2f} % |"
        )
    lines += [
        "",
        *notes(out),
        "",
        "## Scaling",
        "",
        "| method | samples | data | seconds | µs per sample·epoch | cache |",
    ]
    lines.append("|---|---:|---|---:|---:|---:|")
    for s in out["scaling"]:
        lines.append(
            f"| {s['method']} | {s['samples']:,} | {s['data']} | {s['seconds']:.3f} | {s['us_per_sample_epoch']:.3f} | "
            f"{s['cache_bytes'] / 1e6:.1f} MB |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    for name, t in out["targets"].items():
        lines.append(
            f"| {name} | {_fmt(t['value'], '.4g')} | {'-' if t['met'] is None else 'yes' if t['met'] else 'no'} |"
        )
    lines += core_markdown(out)
    lines += ["", f"Reproduce: `{out['setup']['command']}`", ""]
    return "\n".join(lines)


def notes(out: dict[str, Any]) -> list[str]:
    """The figures beside the table: the limit, NF4, cold start."""
    cold = out.get("cold_start") or {}
    comp = out.get("first_compile") or {}

    def run(d: dict, method: str, which: str, spec: str) -> str:
        return _fmt(d.get(method, {}).get(which), spec)

    gflop = out["methods"]["skip2-lora"]["flops"] / 1e9
    return [
        f"- sgemm: {out['sgemm_gflops']:.1f} GFLOP/s (best of the rounds, 1024³, same threads); the Skip2-LoRA "
        f"run is {gflop:.3f} GFLOP, so its FLOP limit is {1e3 * out['flop_limit_seconds']:.2f} ms.",
        f"- NF4 overhead (instantft ÷ skip2-lora − 1): {100 * out['nf4_overhead']:.1f} %.",
        f"- Cold start, first fine-tune in a fresh process (numba cache on disk): skip2-lora "
        f"{run(cold, 'skip2-lora', 'first', '.3f')} s, then instantft {run(cold, 'instantft', 'first', '.3f')} s; "
        f"second runs {run(cold, 'skip2-lora', 'second', '.4f')} s / {run(cold, 'instantft', 'second', '.4f')} s.",
        f"- First compile ever (empty numba cache): skip2-lora {run(comp, 'skip2-lora', 'first', '.2f')} s, "
        f"then instantft {run(comp, 'instantft', 'first', '.2f')} s.",
    ]


def core_markdown(out: dict[str, Any]) -> list[str]:
    """The C core's section: the frozen forward by every peer measured, and the C core's targets."""
    core = out.get("core")
    if not core:
        return []
    mc = out["machine"]
    lines = [
        "",
        "## The C core",
        "",
        f"Kernels `{core.get('kernels')}`; {mc.get('threads')} threads for every peer (load average before/after "
        f"{mc.get('load_average_before')} / {mc.get('load_average_after')} on {mc.get('cores')} cores): wall times "
        "are medians of interleaved rounds.",
        "",
        "| frozen forward of the fine-tuning images | median ms |",
        "|---|---:|",
    ]
    for name, ms in (core.get("forward_ms") or {}).items():
        lines.append(f"| {name} | {ms:.2f} |")
    lines += ["", "| target (C core) | measured | met |", "|---|---:|---|"]
    for name, t in out.get("targets_c_core", {}).items():
        met = "-" if t["met"] is None else "yes" if t["met"] else "no"
        lines.append(f"| {name} | {_fmt(t['value'], '.4g')} | {met} |")
    return lines


def print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="instantft bench (median seconds, end to end)")
    for col in ("method", "seconds", "ms/step", "× vs lora-all", "× of FLOP limit", "accuracy"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, m in out["methods"].items():
        table.add_row(
            name,
            f"{m['seconds']:.4f}",
            f"{m['ms_per_step']:.3f}",
            f"{m['speedup_vs_lora_all']:.1f}",
            _fmt(m["flop_limit_multiple"], ".1f"),
            f"{100 * m['accuracy']:.2f} %",
        )
    console = Console()
    console.print(table)
    for line in notes(out):
        console.print(line, markup=False)
    for name, t in [*out["targets"].items(), *out.get("targets_c_core", {}).items()]:
        console.print(
            f"target {name}: {_fmt(t['value'], '.4g')} ({'-' if t['met'] is None else 'met' if t['met'] else 'missed'})"
        )


def cmd_bench(args: argparse.Namespace) -> int:
    if args.samples < 40:
        raise InstantFTError(f"--samples must be >= 40, got {args.samples}")
    args.scaling = [int(s) for s in args.scaling.split(",")] if args.scaling else []
    log = (lambda msg: print(msg, file=sys.stderr)) if not args.json else (lambda msg: None)
    out = bench(args, log)
    if args.markdown:
        from instantft.fileio import atomic_write_text

        atomic_write_text(Path(args.markdown), markdown(out))
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_table(out)
    return 0


def add_bench(sub: Any) -> None:
    from instantft.config import common

    p = sub.add_parser("bench", parents=[common()], help="time every method's fine-tune against LoRA-All")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--samples", type=int, default=1024, help="fine-tuning samples (default 1024)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--angle", type=float, default=90.0)
    p.add_argument("--checkpoint", default=None, help="backbone (default: the bundled MNIST one)")
    p.add_argument(
        "--scaling",
        default=",".join(str(s) for s in SCALING_SIZES),
        help="sample counts for the scaling runs, comma-separated ('' to skip)",
    )
    p.add_argument(
        "--no-compile-check",
        dest="compile_check",
        action="store_false",
        help="skip timing a first-ever compile in a process with an empty numba cache",
    )
    p.add_argument("--markdown", default=None, help="also write the report as Markdown to this file")
    p.set_defaults(func=cmd_bench)
