"""The C core beside other software: the frozen forward (the cache fill) against ONNX Runtime
and torch on the same LeNet-5 and images, the cached methods end to end on the C engine, fine-tune ÷
inference, and the instruction counts of the fill and of one epoch under ``valgrind
--tool=callgrind`` (repeatable where wall time is not):

    python studies/c_core.py --out results/c_core          (needs the 'bench' extra: onnxruntime, onnx)

CPU and wall times are medians of interleaved rounds in one process (the same threads for every peer);
instruction counts come from ``csrc/bench/bench_core.c``, a small benchmark program compiled here
with the system compiler (it is not the library: nothing the package runs is compiled at run
time). Valgrind does not emulate AVX-512, so the counts are of the AVX2 kernels (recorded).
``instantft bench`` times the same engines without the peers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import ROOT, StudyParser
from instantft import bench
from instantft.backbones import Backbone
from instantft.bench import BenchSettings
from instantft.data import ImageSet
from instantft.engine import cengine
from instantft.engine.chain import chain_for
from instantft.engine.fit import Schedule
from instantft.engine.layout import Layout
from instantft.errors import InstantFTError
from instantft.extras import require
from instantft.fileio import atomic_write_text
from instantft.machine import cpu_model, torch_threads
from instantft.training import FineTuneConfig

CSRC = ROOT / "csrc"
#: the cached methods timed end to end on the C engine, beside the peers' inference
ENGINE_ROWS = ("skip2-lora", "instantft")
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


def peer_times(calls: dict[str, Callable[[], Any]], threads: int, repeats: int, bound: float) -> dict[str, Any]:
    """CPU and wall medians of each call (the frozen forward of the run's images), interleaved."""
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    wall: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode(), torch_threads(threads):
        for f in calls.values():
            f()
        for _ in range(repeats):
            for name, f in calls.items():
                c, w = time.process_time(), time.perf_counter()
                f()
                cpu[name].append(time.process_time() - c)
                wall[name].append(time.perf_counter() - w)
    return {name: bench._summary(cpu[name], wall[name], bound) for name in calls}


def core_figures(model: torch.nn.Module, data: ImageSet, config: FineTuneConfig, s: BenchSettings, args: Any,
                 log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The frozen forward of the run's images by the C core, torch and ONNX Runtime, interleaved at
    the same threads; then the bench program's times and instruction counts."""
    backbone = Backbone(model)
    chain = chain_for(backbone)
    if chain is None:
        raise InstantFTError("the C-core study needs a chain backbone (the bundled LeNet-5 is one)")
    images = data.images.contiguous()
    x = images.numpy()
    rows = np.empty((len(x), chain.row_width), np.float32)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        calls: dict[str, Callable[[], Any]] = {"c_fill": lambda: chain.fill(x, rows, s.threads),
                                               "torch_inference": lambda: model(images)}  # fmt: skip
        if args.onnxruntime:
            session = ort_session(model, images[:2], s.threads, tmp)
            calls["onnxruntime"] = lambda: session.run(["logits"], {"x": x})
        log("the frozen forward: C fill, torch, ONNX Runtime")
        out: dict[str, Any] = {"kernels": cengine.build_info(), "forward": peer_times(calls, s.threads, s.repeats,
                                                                                     s.max_spread)}  # fmt: skip
        if args.callgrind:  # the bench program is compiled here, not the library
            dump = tmp / "lenet.safetensors"
            cengine.write_dump(dump, core_dump(backbone, data, config))
            log("bench program (fill, NF4 fill, one epoch)")
            out["program_ms"] = bench_program(dump, s.threads, max(s.repeats, 5))
            out["program_ms_1_thread"] = bench_program(dump, 1, max(s.repeats, 5))
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
    p.add_argument("--threads", type=int, default=1)
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
    from instantft.run import config_for, load_backbone
    from instantft.settings import Runtime

    if args.onnxruntime:  # before any work: one line if the extra is missing
        require("bench", "onnxruntime", "studies/c_core.py (the ONNX Runtime peer)")
        require("bench", "onnx", "studies/c_core.py (torch.onnx.export)")
    s = BenchSettings(samples=args.samples, repeats=args.repeats, threads=args.threads)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    load_before = os.getloadavg()
    model, _meta = load_backbone("rotmnist")
    data = make_task("rotmnist", angle=args.angle, samples=args.samples, seed=0, data_dir=args.data_dir).finetune
    config = config_for("rotmnist")
    makers = {m: functools.partial(create, m, model, config, runtime=Runtime(engine="c")) for m in ENGINE_ROWS}
    cpu: dict[str, list[float]] = {m: [] for m in makers}
    wall: dict[str, list[float]] = {m: [] for m in makers}
    with torch_threads(s.threads):
        for make in makers.values():  # warm-up
            bench._timed(make, data)
        for rnd in range(s.repeats):
            log(f"fine-tune round {rnd + 1}/{s.repeats}")
            for m, make in makers.items():
                c, w, _ = bench._timed(make, data)
                cpu[m].append(c)
                wall[m].append(w)
    fits = {m: bench._summary(cpu[m], wall[m], s.max_spread) for m in makers}
    core = core_figures(model, data, config, s, args, log)
    ratios = {f"{key.split('_')[0]} {m} fine-tune ÷ {peer} inference": bench._ratio({**fits, **core["forward"]}, m,
                                                                                      peer, key)
              for key in ("cpu_seconds", "wall_seconds") for m in makers for peer in core["forward"]
              if peer != "c_fill"}  # fmt: skip
    out: dict[str, Any] = {
        "fits": fits,
        "core": core,
        "ratios": ratios,
        "machine": {"cpu": cpu_model(), "threads": s.threads, "load_average_before": list(load_before),
                    "load_average_after": list(os.getloadavg())},
        "command": " ".join(["python studies/c_core.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    text = "\n".join([*markdown_lines(out), *program_markdown(core, s.threads), "", f"Reproduce: `{out['command']}`",
                      ""])  # fmt: skip
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "c_core.json", json.dumps(out, indent=1))
        atomic_write_text(d / "c_core.md", text)
    print(text)
    return 0


def markdown_lines(out: dict[str, Any]) -> list[str]:
    m = out["machine"]
    lines = [f"# instantft C core beside torch and ONNX Runtime: {m['cpu']}, {m['threads']} thread(s) for every peer",
             "", "| row | CPU s | wall s | CPU spread | wall spread |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in {**out["fits"], **{f"forward: {k}": v for k, v in out["core"]["forward"].items()}}.items():
        lines.append(f"| {name} | {r['cpu_seconds']:.4f} | {r['wall_seconds']:.4f} | {r['cpu_spread']:.2f} | "
                     f"{r['wall_spread']:.2f} |")  # fmt: skip
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {'flagged' if v is None else f'{v:.3g}'} |" for k, v in out["ratios"].items()]
    return lines


if __name__ == "__main__":
    sys.exit(main())
