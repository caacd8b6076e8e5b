"""The C core's figures for ``instantft bench`` (issue 10 §5): the frozen forward (the cache fill)
against ONNX Runtime and torch on the same LeNet-5 and images, fine-tune ÷ inference-only, the
thread scaling, and the instruction counts of the fill and of one epoch under
``valgrind --tool=callgrind`` (repeatable where wall time is not: this machine is shared).

Wall times are medians of interleaved rounds in one process (the same threads for every peer);
instruction counts come from ``csrc/bench/bench_core.c``, a small benchmark program compiled here
with the system compiler (it is not the library: nothing the package runs is compiled at run
time). Valgrind does not emulate AVX-512, so the counts are of the AVX2 kernels (recorded).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instantft.backbones import Backbone
from instantft.data import ImageSet
from instantft.engine import cengine, numba_available
from instantft.engine.chain import chain_for, flops_per_sample
from instantft.engine.fit import Schedule
from instantft.engine.layout import Layout
from instantft.training import FineTuneConfig

CSRC = Path(__file__).resolve().parents[3] / "csrc"
#: (mode of bench_core, the entry point whose instructions are counted)
CALLGRIND_MODES = (
    ("fill", "ift_cache_fill_chain"),
    ("fill-nf4", "ift_cache_fill_chain"),
    ("epoch", "ift_train"),
    ("epoch-nf4", "ift_train"),
)


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def ort_session(model: torch.nn.Module, example: torch.Tensor, threads: int, tmp: Path) -> Any | None:
    """ONNX Runtime's CPU session for ``model`` exported with ``torch.onnx.export``, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = tmp / "model.onnx"
    axes = {"x": {0: "n"}, "logits": {0: "n"}}
    try:
        torch.onnx.export(
            model, (example,), str(path), input_names=["x"], output_names=["logits"], dynamic_axes=axes, dynamo=False
        )
    except TypeError:  # an older torch without the dynamo switch
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"], dynamic_axes=axes)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def core_dump(backbone: Backbone, data: ImageSet, config: FineTuneConfig) -> dict[str, np.ndarray]:
    """What csrc/bench/bench_core.c reads: the chain, the images, the initial packed adapters of
    the run (rank padded, A Gaussian, B zero, the run's seed) and its schedule."""
    from instantft.adapters import SkipAdapters

    chain = chain_for(backbone)
    if chain is None:
        raise ValueError("the bench backbone must be a chain")
    layout = Layout.for_backbone(backbone, config.rank)
    adapters = SkipAdapters(
        backbone.sizes, backbone.num_classes, config, torch.Generator().manual_seed(config.adapter_seed)
    )
    A, B = layout.pack(adapters.A, adapters.B)
    plan = Schedule(len(data), config)
    arrays = cengine.chain_arrays(chain)
    arrays.update(
        images=data.images.reshape(len(data), -1).numpy(),
        labels=data.labels.numpy().astype(np.int64),
        seg=layout.segments(),
        A0=A.numpy(),
        B0=B.numpy(),
        lr_scale=np.array([config.lr, config.scale], np.float32),
        order=plan.order.numpy().astype(np.int64),
        offsets=plan.offsets.numpy().astype(np.int64),
        epoch_steps=np.array([b - a for a, b in plan.epoch_ranges()], np.int64),
    )
    return arrays


def _build_bench_program(tmp: Path, openmp: bool) -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = tmp / "bench_core"
    cmd = [
        cc,
        "-std=c11",
        "-O3",
        "-ffp-contract=fast",
        "-g",
        f"-I{CSRC}",
        *(["-fopenmp"] if openmp else []),
        str(CSRC / "bench" / "bench_core.c"),
        str(CSRC / "core.c"),
        str(CSRC / "nf4.c"),
        "-o",
        str(exe),
        "-lm",
    ]
    return exe if subprocess.run(cmd, capture_output=True).returncode == 0 else None


def callgrind_counts(dump: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Instructions (callgrind ``Ir``) of each mode's entry point, inclusive, one thread."""
    valgrind = shutil.which("valgrind")
    if valgrind is None or not CSRC.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        exe = _build_bench_program(tmp, openmp=False)
        if exe is None:
            return None
        out: dict[str, Any] = {}
        for mode, entry in CALLGRIND_MODES:
            log(f"callgrind {mode}")
            trace = tmp / f"callgrind.{mode}"
            cmd = [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={trace}",
                "--collect-atstart=no",
                f"--toggle-collect={entry}",
                str(exe),
                str(dump),
                mode,
                "1",
                "1",
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                return None
            totals = [line for line in trace.read_text().splitlines() if line.startswith(("totals:", "summary:"))]
            report = json.loads(res.stdout.strip().splitlines()[-1])
            out[mode] = {"instructions": int(totals[-1].split()[1]), "entry": entry, "kernels": report["kernels"]}
    return out


def bench_program(dump: Path, threads: int, repeats: int) -> dict[str, float] | None:
    """Median ms of the bench program's modes, natively (best kernels, OpenMP)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        exe = _build_bench_program(Path(tmp_name), openmp=True)
        if exe is None:
            return None
        out = {}
        for mode in ("fill", "fill-nf4", "epochs"):
            res = subprocess.run(
                [str(exe), str(dump), mode, str(threads), str(repeats)], capture_output=True, text=True
            )
            if res.returncode != 0:
                return None
            out[mode] = json.loads(res.stdout.strip().splitlines()[-1])["median_ms"]
    return out


def core_figures(
    model: torch.nn.Module,
    data: ImageSet,
    config: FineTuneConfig,
    threads: int,
    repeats: int,
    log: Callable[[str], None],
    callgrind: bool = True,
) -> dict[str, Any]:
    """The frozen forward of the run's 1,024 images by every peer, interleaved, median ms."""
    backbone = Backbone(model)
    chain = chain_for(backbone)
    out: dict[str, Any] = {"kernels": cengine.build_info() if cengine.available() else None}
    if chain is None:
        return out
    images = data.images.contiguous()
    x = images.numpy()
    rows = np.empty((len(x), chain.row_width), np.float32)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        session = ort_session(model, images[:2], threads, tmp)
        peers: dict[str, Callable[[], Any]] = {
            "c_fill": lambda: chain.fill(x, rows, threads),
            "c_fill_1_thread": lambda: chain.fill(x, rows, 1),
            "torch_eager": lambda: model(images),
        }
        if session is not None:
            peers["onnxruntime"] = lambda: session.run(["logits"], {"x": x})
        if numba_available():
            from instantft.engine.fill import compiled_rows_into, lenet_fast_path

            if lenet_fast_path(backbone):
                out_rows = torch.empty(len(x), chain.row_width)
                peers["numba_fill"] = lambda: compiled_rows_into(backbone, images, out_rows)
        times: dict[str, list[float]] = {k: [] for k in peers}
        with torch.no_grad():
            for f in peers.values():  # warm-up (first calls, allocations)
                f()
            for rnd in range(repeats):
                log(f"frozen forward round {rnd + 1}/{repeats}")
                for name, f in peers.items():
                    t = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t)
        out["forward_ms"] = {k: _median_ms(v) for k, v in times.items()}
        out["forward_runs_ms"] = {k: [1e3 * t for t in v] for k, v in times.items()}
        out["forward_flops"] = flops_per_sample(chain) * len(x)
        if callgrind:  # the bench program is compiled here (a developer tool, not the library)
            dump = tmp / "lenet.bin"
            cengine.write_dump(dump, core_dump(backbone, data, config))
            log("bench program (fill, NF4 fill, one epoch)")
            out["program_ms"] = bench_program(dump, threads, max(repeats, 5))
            out["program_ms_1_thread"] = bench_program(dump, 1, max(repeats, 5))
            out["callgrind"] = callgrind_counts(dump, log)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m instantft.experiments.core_bench [--out DIR]``: issue 10's figures alone (the C
    and numba engines end to end, the frozen forward peers, threads, cold start, callgrind), the
    part of ``instantft bench`` that does not run the slow baselines."""
    import argparse
    import functools
    import sys
    from dataclasses import replace

    from instantft.experiments import bench as full
    from instantft.fileio import atomic_write_text
    from instantft.methods import create
    from instantft.models import LeNet5
    from instantft.run import config_for, load_backbone

    p = argparse.ArgumentParser(prog="python -m instantft.experiments.core_bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--angle", type=float, default=90.0)
    p.add_argument("--out", default=None, help="write DIR/c_core.json and DIR/c_core.md")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    args.checkpoint, args.compile_check = None, False
    torch.set_num_threads(args.threads)
    load_before = full.load_average()
    model, _meta = load_backbone("rotmnist")
    assert isinstance(model, LeNet5)
    from instantft.data import make_task

    task = make_task("rotmnist", angle=args.angle, samples=args.samples, seed=0, data_dir=args.data_dir)
    data, config = task.finetune, config_for("rotmnist")
    rows = [(f"{m}[{e}]", m, e) for e in ("c", "numba") for m in ("skip2-lora", "instantft") if full._engine_ok(e)]
    makers = {row: functools.partial(create, m, model, replace(config, engine=e)) for row, m, e in rows}
    runs: dict[str, list[float]] = {row: [] for row in makers}
    steps = 0
    for make in makers.values():  # warm-up
        steps = full.timed_fit(make, data)[1].steps
    gflops = []
    for _ in range(args.repeats):
        gflops.append(full.sgemm_gflops())
        for row, make in makers.items():
            runs[row].append(full.timed_fit(make, data)[0])
    torch.set_num_threads(1)
    one = [full.timed_fit(makers["skip2-lora[c]"], data)[0] for _ in range(args.repeats)]
    torch.set_num_threads(args.threads)
    flops = full.skip_run_flops(model, config, len(data), steps, config.batch_size)
    sgemm = max(gflops)
    methods = {
        row: {
            "seconds": statistics.median(r),
            "runs": r,
            "flop_limit_multiple": statistics.median(r) / (flops / (sgemm * 1e9)),
        }
        for row, r in runs.items()
    }
    core = core_figures(model, data, config, args.threads, args.repeats, lambda m: print(m, file=sys.stderr))
    core["skip2_lora_c_1_thread_seconds"] = statistics.median(one)
    core["skip2_lora_c_1_thread_runs"] = one
    cold = full.cold_start(args, empty_numba_cache=False)
    out: dict[str, Any] = {
        "methods": methods,
        "core": core,
        "sgemm_gflops": sgemm,
        "flops": flops,
        "cold_start": cold,
        "cold_start_seconds": cold["skip2-lora"]["first"] if cold else None,
        "machine": {**full.machine(args.threads), "load_average_before": load_before,
                    "load_average_after": full.load_average()},
        "command": "python -m instantft.experiments.core_bench " + " ".join(argv or sys.argv[1:]),
    }  # fmt: skip
    out["targets_c_core"] = full.targets_c_core(out)
    text = "\n".join(["# instantft C core (issue 10)", "", *full.core_markdown(out), "",
                      f"Reproduce: `{out['command']}`", ""])  # fmt: skip
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "c_core.json", json.dumps(out, indent=1))
        atomic_write_text(d / "c_core.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
