"""The fan task on the device program: ``instantft export --dataset fan`` -> ``instantft-device``
(x86 build, and the aarch64 build under qemu-aarch64), against Python's reference loop on the
same bundle and Python's own ``finetune`` on the float spectra: results/fan/device.{json,md}.

    make device device-aarch64
    INSTANTFT_DATA=/work/shared/data .venv/bin/python studies/fan_device.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from instantft.cli import main as cli
from instantft.device.bundle import reference_fit
from instantft.machine import machine_info
from instantft.run import Run, finetune
from instantft.settings import Task

ROOT = Path(__file__).resolve().parents[1]
BUILDS = {
    "x86-64": [str(ROOT / "build/instantft-device")],
    "aarch64 (qemu-aarch64)": [
        "qemu-aarch64",
        "-L",
        "/usr/aarch64-linux-gnu",
        str(ROOT / "build/instantft-device-aarch64"),
    ],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fan")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/fan"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        assert cli(["export", "--dataset", a.dataset, "--method", "instantft", "--out", str(bundle), "--json"]) == 0
        _, ref = reference_fit(bundle)
        runs: dict[str, list[dict[str, Any]]] = {}
        for name, argv in BUILDS.items():
            if shutil.which(argv[0]) is None or not Path(argv[-1]).is_file():
                continue
            runs[name] = []
            for _ in range(a.repeats):
                proc = subprocess.run([*argv, str(bundle)], capture_output=True, text=True, check=True)
                runs[name].append(json.loads(proc.stdout))
    python = finetune(Run(method="instantft", task=Task(dataset=a.dataset))).record
    machine = machine_info()
    lines = [
        f"# {a.dataset} on the device program", "",
        f"`python studies/fan_device.py --repeats {a.repeats}` on {machine['cpu']}, 1 thread, commit "
        f"{machine['git_commit']}. The aarch64 build runs under qemu-aarch64 user emulation: its times are the "
        "emulator's, not a board's. Median of the repeats.", "",
        "| run | accuracy before | accuracy after | correct after | cache bytes | fine-tune s | of which cache fill s "
        "| peak RSS (KiB) | kernels |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| Python `finetune` (float spectra) | {python['accuracy_before']:.4f} | {python['accuracy_after']:.4f} | "
        f"| {python['cache_bytes']:,} | {python['finetune_seconds']:.4f} | | | |",
        f"| Python reference loop on the bundle | {ref['accuracy_before']:.4f} | {ref['accuracy_after']:.4f} | "
        f"{ref['correct_after']} | {ref['cache_bytes']:,} | | | | |",
    ]  # fmt: skip
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("finetune_seconds", "fill_seconds", "peak_rss_kb")}
        r = rs[0]
        lines.append(f"| instantft-device, {name} | {r['accuracy_before']:.4f} | {r['accuracy_after']:.4f} | "
                     f"{r['correct_after']} | {r['cache_bytes']:,} | {med['finetune_seconds']:.4f} | "
                     f"{med['fill_seconds']:.4f} | {med['peak_rss_kb']:.0f} | {r['kernels']} |")  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "device.json").write_text(json.dumps({"machine": machine, "python": {k: python[k] for k in (
        "accuracy_before", "accuracy_after", "cache_bytes", "finetune_seconds")}, "reference": {
        k: ref[k] for k in ("accuracy_before", "accuracy_after", "correct_after", "cache_bytes")}, "device": runs},
        indent=1) + "\n")  # fmt: skip
    (a.out / "device.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
