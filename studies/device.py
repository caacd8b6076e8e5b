"""The device figures (peak RSS, stripped binary size, aarch64 vs x86), measured, not typed in:

    python studies/device.py --out results/device

It builds with ``make device device-aarch64`` and runs the aarch64 build under ``qemu-aarch64``
(``--no-qemu``, or without qemu: the x86 build only).

For each of skip2-lora and instantft on RotMNIST 90° (1,024 fine-tuning images, the other 8,976
evaluated, the defaults of ``finetune``): export the bundle, run the x86 build (peak RSS from
``wait4``), run the aarch64 build under qemu, compare their accuracies and Forward Cache bytes
(NF4 codes), and compare both with Python (``finetune`` on the float images, and the reference
loop on the bundle's own images).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import ROOT, StudyParser
from instantft.fileio import atomic_write_json, atomic_write_text
from instantft.progress import progress_bar

TARGETS = {"peak_rss_mb": 16.0, "stripped_binary_kb": 256.0, "aarch64_vs_x86_accuracy_pt": 0.05}
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


def _run(cmd: list[str]) -> tuple[dict[str, Any], float]:
    """Run the device program: its JSON line and the wall seconds. (Its peak RSS is in the JSON,
    read by the program from its own VmHWM: wait4's ru_maxrss would count the pages of this
    Python process that the fork copied before exec.)"""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout), wall


def _max_rel(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest |a - b| over each tensor, relative to that tensor's largest |b|."""
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def measure(method: str, work: Path, qemu: bool) -> dict[str, Any]:
    from safetensors.numpy import load_file

    from instantft.cli import main
    from instantft.device import ADAPTER_FILE
    from instantft.device.bundle import reference_fit
    from instantft.fileio import load_tensors
    from instantft.run import Run, finetune
    from instantft.settings import Task

    bundle = work / method
    if main(["export", "--dataset", "rotmnist", "--angle", "90", "--method", method, "--out", str(bundle), "--json"]):
        raise SystemExit("export failed")
    x86, wall = _run([str(ROOT / "build/instantft-device"), str(bundle)])  # peak RSS and time: the plain run
    _run([str(ROOT / "build/instantft-device"), str(bundle), "--dump-cache", str(work / "x86.cache")])
    x86_adapter = load_tensors(bundle / ADAPTER_FILE)
    want, ref = reference_fit(bundle)
    python = finetune(Run(method=method, task=Task(dataset="rotmnist", angle=90))).record
    row: dict[str, Any] = {
        "method": method,
        "samples": x86["samples"],
        "eval_samples": x86["eval_samples"],
        "steps": x86["steps"],
        "cache_bytes": x86["cache_bytes"],
        "x86": {"accuracy_before": x86["accuracy_before"], "accuracy_after": x86["accuracy_after"],
                "kernels": x86["kernels"], "finetune_seconds": x86["finetune_seconds"],
                "peak_rss_mb": round(x86["peak_rss_kb"] / 1024, 2), "wall_seconds": round(wall, 3)},
        "python_finetune_accuracy_after": python["accuracy_after"],
        "python_reference_accuracy_after": ref["accuracy_after"],
        "adapters_max_rel_diff_x86_vs_reference": _max_rel(x86_adapter, want),
    }
    if qemu:
        arm, arm_wall = _run([*QEMU, str(ROOT / "build/instantft-device-aarch64"), str(bundle),
                                 "--dump-cache", str(work / "arm.cache")])  # fmt: skip
        a, b = load_file(str(work / "arm.cache")), load_file(str(work / "x86.cache"))
        key = "codes" if "codes" in a else "rows"
        row["aarch64"] = {"accuracy_before": arm["accuracy_before"], "accuracy_after": arm["accuracy_after"],
                          "kernels": arm["kernels"], "qemu_wall_seconds": round(arm_wall, 1)}  # fmt: skip
        row["aarch64_vs_x86_accuracy_pt"] = abs(arm["accuracy_after"] - x86["accuracy_after"]) * 100
        row["cache_identical"] = bool(np.array_equal(a[key], b[key]))
        if key == "codes":
            row["nf4_codes_identical"] = row["cache_identical"]
            row["nf4_codes_differing_bytes"] = int((a["codes"] != b["codes"]).sum())
        row["adapters_max_rel_diff_aarch64_vs_x86"] = _max_rel(load_tensors(bundle / ADAPTER_FILE), x86_adapter)
    return row


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(fig: dict[str, Any]) -> str:
    lines = [
        "# instantft-device figures",
        "",
        f"Command: `{fig['command']}` (commit {fig['commit']}, {fig['date']}, {fig['cpu']}"
        + (f", {fig['note']})" if fig.get("note") else ")"),
        "",
        "| figure | skip2-lora | instantft | target |",
        "|---|---|---|---|",
    ]
    runs = {r["method"]: r for r in fig["runs"]}
    s, i = runs.get("skip2-lora", {}), runs.get("instantft", {})

    def cell(r: dict[str, Any], *path: str, fmt: str = "{}") -> str:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return "-" if v is None else fmt.format(v)

    rows = [
        ("peak RSS of instantft-device (x86, MiB)", ("x86", "peak_rss_mb"), "{:.2f}", "≤ 16 (stretch 8)"),
        ("Forward Cache bytes", ("cache_bytes",), "{:,}", ""),
        ("accuracy before (x86)", ("x86", "accuracy_before"), "{:.4f}", ""),
        ("accuracy after (x86)", ("x86", "accuracy_after"), "{:.4f}", ""),
        ("accuracy after (aarch64, qemu)", ("aarch64", "accuracy_after"), "{:.4f}", ""),
        ("accuracy after (Python finetune, float images)", ("python_finetune_accuracy_after",), "{:.4f}", ""),
        ("accuracy after (Python reference loop, bundle)", ("python_reference_accuracy_after",), "{:.4f}", ""),
        ("aarch64 vs x86 accuracy (pt)", ("aarch64_vs_x86_accuracy_pt",), "{:.4f}", "≤ 0.05"),
        ("cache bytes identical aarch64 vs x86", ("cache_identical",), "{}", "NF4 codes identical"),
        ("adapters: max rel diff x86 vs reference", ("adapters_max_rel_diff_x86_vs_reference",), "{:.2e}", "1e-5"),
        ("adapters: max rel diff aarch64 vs x86", ("adapters_max_rel_diff_aarch64_vs_x86",), "{:.2e}", "1e-5"),
        ("finetune seconds (x86, fill + 510 steps)", ("x86", "finetune_seconds"), "{:.3f}", ""),
    ]
    for label, path, fmt, target in rows:
        lines.append(f"| {label} | {cell(s, *path, fmt=fmt)} | {cell(i, *path, fmt=fmt)} | {target} |")
    lines += ["", "| binary (stripped) | bytes | target |", "|---|---|---|"]
    for name, size in fig["binaries"].items():
        lines.append(f"| {name} | {size:,} ({size / 1024:.0f} KiB) | ≤ 256 KiB |")
    lines += ["", "Shared libraries needed: " + ", ".join(fig["needed"]) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/device.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "device"))
    p.add_argument("--no-qemu", action="store_true", help="skip the aarch64 runs")
    p.add_argument("--note", default="", help="a sentence on the machine, quoted beside the figures")
    args = p.parse_args(argv)
    qemu = not args.no_qemu and shutil.which("qemu-aarch64") is not None
    targets = ["device", "device-aarch64"] if qemu else ["device"]
    subprocess.run(["make", "-s", *targets], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="instantft-figures-") as tmp, progress_bar() as bar:
        task = bar.add_task("device", total=2, status="")
        runs = []
        for m in ("skip2-lora", "instantft"):
            bar.update(task, status=m)
            runs.append(measure(m, Path(tmp), qemu))
            bar.advance(task)
    built = (ROOT / "build/instantft-device", ROOT / "build/instantft-device-aarch64")
    binaries = {b.name: b.stat().st_size for b in built if b.exists()}
    readelf = subprocess.run(["readelf", "-d", str(ROOT / "build/instantft-device")], capture_output=True, text=True)
    needed = [ln.split("[")[1].rstrip("]") for ln in readelf.stdout.splitlines() if "NEEDED" in ln]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    watched = ["csrc", "src/instantft/device", "studies/device.py"]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *watched], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    fig = {
        "command": " ".join(["python studies/device.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": commit.stdout.strip() + ("-dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_name(),
        "note": args.note,
        "targets": TARGETS,
        "runs": runs,
        "binaries": binaries,
        "needed": needed,
    }
    out = Path(args.out)
    atomic_write_json(out / "figures.json", fig)
    atomic_write_text(out / "figures.md", markdown(fig))
    print(markdown(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
