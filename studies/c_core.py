"""The C core beside other software: the frozen forward (the cache fill) against ONNX Runtime
and torch on the same LeNet-5 and images, the C and numba engines end to end, fine-tune ÷
inference-only, the thread scaling, cold start, and the instruction counts of the fill and of one
epoch under ``valgrind --tool=callgrind`` (repeatable where wall time is not):

    python studies/c_core.py --out results/c_core          (needs the 'bench' extra: onnxruntime, onnx)

Wall times are medians of interleaved rounds in one process (the same threads for every peer);
instruction counts come from ``csrc/bench/bench_core.c``, a small benchmark program compiled here
with the system compiler (it is not the library: nothing the package runs is compiled at run
time). Valgrind does not emulate AVX-512, so the counts are of the AVX2 kernels (recorded).
``instantft bench`` times the same engines without the peers.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import ROOT, StudyParser
from instantft import bench
from instantft.backbones import Backbone
from instantft.data import ImageSet
from instantft.engine import cengine
from instantft.engine.chain import chain_for
from instantft.engine.fit import Schedule
from instantft.engine.layout import Layout
from instantft.errors import InstantFTError
from instantft.extras import require
from instantft.fileio import atomic_write_text
from instantft.training import FineTuneConfig

CSRC = ROOT / "csrc"
#: (mode of bench_core, the entry point whose instructions are counted)
CALLGRIND_MODES = (
    ("fill", "ift_cache_fill_chain"),
    ("fill-nf4", "ift_cache_fill_chain"),
    ("epoch", "ift_train"),
    ("epoch-nf4", "ift_train"),
)


def ort_session(model: torch.nn.Module, example: torch.Tensor, threads: int, tmp: Path) -> Any:
    """ONNX Runtime's CPU session for ``model`` exported with ``torch.onnx.export`` (which needs
    the onnx package: both come with the 'bench' extra)."""
    ort = require("bench", "onnxruntime", "studies/c_core.py (the ONNX Runtime peer)")
    require("bench", "onnx", "studies/c_core.py (torch.onnx.export)")
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
    onnxruntime: bool = True,
) -> dict[str, Any]:
    """The frozen forward of the run's images by every peer, interleaved, median ms; then the
    bench program's times and instruction counts."""
    backbone = Backbone(model)
    images = data.images.contiguous()
    x = images.numpy()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        peers: dict[str, Callable[[], Any]] = {}
        if onnxruntime:
            session = ort_session(model, images[:2], threads, tmp)
            peers["onnxruntime"] = lambda: session.run(["logits"], {"x": x})
        out = bench.forward_times(model, data, threads, repeats, log, peers)
        if callgrind and chain_for(backbone) is not None:  # the bench program is compiled here, not the library
            dump = tmp / "lenet.bin"
            cengine.write_dump(dump, core_dump(backbone, data, config))
            log("bench program (fill, NF4 fill, one epoch)")
            out["program_ms"] = bench_program(dump, threads, max(repeats, 5))
            out["program_ms_1_thread"] = bench_program(dump, 1, max(repeats, 5))
            out["callgrind"] = callgrind_counts(dump, log)
    return out


def program_markdown(core: dict[str, Any], threads: int) -> list[str]:
    """Instruction counts under callgrind and the bench program's times (no Python)."""
    lines: list[str] = []
    cg = core.get("callgrind")
    if cg:
        lines += ["", "| callgrind (one thread) | instructions | entry point | kernels |", "|---|---:|---|---|"]
        for mode, c in cg.items():
            lines.append(f"| {mode} | {c['instructions']:,} | `{c['entry']}` | {c['kernels']} |")
    prog = core.get("program_ms")
    if prog:
        lines += ["", "bench program (csrc/bench/bench_core.c, no Python), median ms: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in prog.items())
                  + f" ({threads} threads); one thread: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in (core.get("program_ms_1_thread") or {}).items())]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/c_core.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--angle", type=float, default=90.0)
    p.add_argument("--out", default=None, help="write DIR/c_core.json and DIR/c_core.md (e.g. results/c_core)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false", help="skip the ONNX Runtime peer")
    p.add_argument("--no-callgrind", dest="callgrind", action="store_false",
                   help="skip the bench program (compiled here) and its instruction counts")  # fmt: skip
    args = p.parse_args(argv)
    try:
        return run(args, argv)
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from instantft.data import make_task
    from instantft.methods import create
    from instantft.models import LeNet5
    from instantft.progress import progress_bar
    from instantft.run import config_for, load_backbone

    args.checkpoint, args.compile_check = None, False
    if args.onnxruntime:  # before any work: one line if the extra is missing
        require("bench", "onnxruntime", "studies/c_core.py (the ONNX Runtime peer)")
        require("bench", "onnx", "studies/c_core.py (torch.onnx.export)")
    torch.set_num_threads(args.threads)
    load_before = bench.load_average()
    model, _meta = load_backbone("rotmnist")
    assert isinstance(model, LeNet5)
    task = make_task("rotmnist", angle=args.angle, samples=args.samples, seed=0, data_dir=args.data_dir)
    data, config = task.finetune, config_for("rotmnist")
    rows = [(f"{m}[{e}]", m, e) for e in ("c", "numba") for m in ("skip2-lora", "instantft") if bench.engine_ok(e)]
    makers = {row: functools.partial(create, m, model, replace(config, engine=e)) for row, m, e in rows}
    runs: dict[str, list[float]] = {row: [] for row in makers}
    steps = 0
    gflops = []
    with progress_bar() as bar:
        task_id = bar.add_task("engines", total=len(makers) * (1 + args.repeats), status="warm-up")
        for make in makers.values():  # warm-up
            steps = bench.timed_fit(make, data)[1].steps
            bar.advance(task_id)
        for rnd in range(args.repeats):
            bar.update(task_id, status=f"round {rnd + 1}/{args.repeats}")
            gflops.append(bench.sgemm_gflops())
            for row, make in makers.items():
                runs[row].append(bench.timed_fit(make, data)[0])
                bar.advance(task_id)
    torch.set_num_threads(1)
    one = [bench.timed_fit(makers["skip2-lora[c]"], data)[0] for _ in range(args.repeats)]
    torch.set_num_threads(args.threads)
    flops = bench.skip_run_flops(model, config, len(data), steps, config.batch_size)
    sgemm = max(gflops)
    methods = {
        row: {
            "seconds": statistics.median(r),
            "runs": r,
            "flop_limit_multiple": statistics.median(r) / (flops / (sgemm * 1e9)),
        }
        for row, r in runs.items()
    }
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    core = core_figures(model, data, config, args.threads, args.repeats, log, args.callgrind, args.onnxruntime)
    core["skip2_lora_c_1_thread_seconds"] = statistics.median(one)
    core["skip2_lora_c_1_thread_runs"] = one
    cold = bench.cold_start(args, empty_numba_cache=False)
    out: dict[str, Any] = {
        "methods": methods,
        "core": core,
        "sgemm_gflops": sgemm,
        "flops": flops,
        "cold_start": cold,
        "cold_start_seconds": cold["skip2-lora"]["first"] if cold else None,
        "machine": {**bench.machine(args.threads), "load_average_before": load_before,
                    "load_average_after": bench.load_average()},
        "command": " ".join(["python studies/c_core.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    out["targets_c_core"] = bench.targets_c_core(out)
    title = "# instantft C core beside " + ("ONNX Runtime and torch" if args.onnxruntime else "torch")
    text = "\n".join([title, "", *bench.core_markdown(out),
                      *program_markdown(core, args.threads), "", f"Reproduce: `{out['command']}`", ""])  # fmt: skip
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "c_core.json", json.dumps(out, indent=1))
        atomic_write_text(d / "c_core.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
