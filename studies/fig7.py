"""The paper's Fig. 7 accuracy sweep (RotMNIST / RotFMNIST, every method, 15°..90°), the talk's
table (RotFMNIST 75°), the time panel, the cache sizes, an ablation of the defaults the paper
leaves open, the SVHN N-sweep where SVHN is on disk, the backbones study (backbones.py) and the
fixed-point study (fixedpoint.py), and ``report.md`` with its tables and plots:

    python studies/fig7.py --jobs 2 --out results/reproduce      (or: instantft reproduce --jobs 2)
    python studies/fig7.py --quick                               (2 seeds, 45° and 90°: minutes)

Every fine-tuning run is one object in ``results.json`` keyed by (study, dataset, angle, method,
seed, variant). The file is rewritten atomically after each group of runs, and a re-run skips
the runs already in it, so an interrupt loses at most the groups in flight. Runs are grouped by
(dataset, angle, seed, variant) so a group shares its task and backbone; ``--jobs`` runs groups
in parallel processes (one torch thread each).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import _fig7_report as report
import backbones as backbones_study
import fixedpoint as fixedpoint_study
from _common import METHODS, ROOT, Group, StudyParser, run_groups
from instantft.errors import InstantFTError
from instantft.fileio import atomic_write_json

ANGLES = (15, 30, 45, 60, 75, 90)
DATASETS = ("rotmnist", "rotfmnist")
#: The ablation of the two choices the paper does not state (see the README).
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "drop-last, A~N(0,0.1²)": {"drop_last": True, "init": "gaussian", "init_std": 0.1},
    "keep-last, A~N(0,0.1²)": {"drop_last": False, "init": "gaussian", "init_std": 0.1},
    "drop-last, A~N(0,0.01²)": {"drop_last": True, "init": "gaussian", "init_std": 0.01},
    "drop-last, A~N(0,1)": {"drop_last": True, "init": "gaussian", "init_std": 1.0},
    "drop-last, kaiming-uniform": {"drop_last": True, "init": "kaiming"},
    "keep-last, kaiming-uniform": {"drop_last": False, "init": "kaiming"},
}
ABLATION_METHODS = ("lora-all", "instantft")
#: SVHN pre-training sizes N from SVHN-extra (paper §5.1)
SVHN_NS = (30000, 60000, 120000, 180000, 521131)
STUDIES = ("fig7", "ablation", "svhn", "backbones", "timing", "fixedpoint")


# --- timing (Fig. 7 time panel, the talk's table) ----------------------------------------------
def time_methods(
    methods: Iterable[str] = METHODS[1:],
    dataset: str = "rotmnist",
    angle: float = 90.0,
    repeats: int = 5,
    threads: int = 2,
    seed: int = 0,
    samples: int = 1024,
    epochs: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Median fine-tune seconds of each method in this process (round-robin over the methods so
    they share the machine's noise), after one warm-up, and one base forward (inference only)."""
    from instantft.data import make_task
    from instantft.methods import create
    from instantft.models import predict
    from instantft.run import config_for, load_backbone
    from instantft.settings import Runtime

    torch.set_num_threads(threads)
    model, _ = load_backbone(dataset)
    task = make_task(dataset, angle=angle, seed=seed, samples=samples, data_dir=data_dir)
    config = config_for(dataset, seed=seed, epochs=epochs)
    # each method as it runs by default, plus the cached methods on the plain torch reference loop:
    # the same loop Skip-LoRA uses, so the cache's own gain is seen apart from the compiled engine's
    runs = {m: (m, config, Runtime()) for m in methods}
    runs.update(
        {
            f"{m} (reference loop)": (m, config, Runtime(engine="reference"))
            for m in ("skip2-lora", "instantft")
            if m in runs
        }
    )
    seconds: dict[str, list[float]] = {m: [] for m in runs}
    cache_bytes: dict[str, int] = {}
    infer: list[float] = []
    for rep in range(repeats + 1):
        for label, (name, cfg, runtime) in runs.items():
            fit = create(name, model, cfg, runtime=runtime).fit(task.finetune)
            if rep:
                seconds[label].append(fit.seconds)
            cache_bytes[label] = fit.cache_bytes
        t0 = time.perf_counter()
        predict(model, task.finetune.images, batch_size=len(task.finetune))
        if rep:
            infer.append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in seconds.items()}
    return {
        "dataset": dataset,
        "angle": angle,
        "samples": len(task.finetune),
        "repeats": repeats,
        "threads": threads,
        "median_seconds": med,
        "all_seconds": seconds,
        "cache_bytes": cache_bytes,
        "inference_seconds": statistics.median(infer),
        "speedups": {
            "lora-all->skip-lora": med["lora-all"] / med["skip-lora"],
            "skip-lora->skip2-lora": med["skip-lora"] / med["skip2-lora"],
            "lora-all->instantft": med["lora-all"] / med["instantft"],
            "nf4_overhead": med["instantft"] / med["skip2-lora"] - 1.0,
            "skip-lora->skip2-lora (same loop)": med["skip-lora"] / med["skip2-lora (reference loop)"],
            "nf4_overhead (same loop)": med["instantft (reference loop)"] / med["skip2-lora (reference loop)"] - 1.0,
        },
    }


def cache_sizes() -> dict[str, int]:
    """Exact bytes of the fp32 and NF4 caches for 1,024 MNIST-shaped and 73,257 SVHN samples."""
    from instantft.backbones import create_backbone
    from instantft.cache import ForwardCache

    out = {}
    for arch, n in (("lenet5-mnist", 1024), ("lenet5-svhn", 73257)):
        sizes = create_backbone(arch).cache_sizes
        for storage in ("fp32", "nf4"):
            out[f"{storage}_{n}"] = n * ForwardCache(sizes, 0, storage).row_bytes  # type: ignore[arg-type]
    return out


@dataclass
class ReproduceConfig:
    out: Path = ROOT / "results" / "reproduce"
    seeds: int = 10
    quick: bool = False
    jobs: int = 1
    angles: tuple[int, ...] = ANGLES
    datasets: tuple[str, ...] = DATASETS
    timing_repeats: int = 5
    ablation: bool = True
    fixedpoint: bool = True
    show_progress: bool = True
    data_dir: str | None = None
    #: smaller runs for tests: fine-tuning samples, evaluation samples, epochs
    samples: int = 1024
    eval_samples: int | None = None
    epochs: int | None = None
    #: the SVHN sweep: pre-training sizes N (paper §5.1) and fine-tuning samples (the train split)
    svhn_ns: tuple[int, ...] = SVHN_NS
    svhn_samples: int = 73257
    #: the any-backbone study: every method on these bundled families beside LeNet-5 (90°)
    backbones: tuple[str, ...] = backbones_study.FAMILIES
    #: run only these studies (default: all); "backbones" alone adds that study to a finished run
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.quick:
            self.seeds, self.angles, self.timing_repeats = min(self.seeds, 2), (45, 90), min(self.timing_repeats, 3)
        if self.seeds < 1:
            raise InstantFTError(f"--seeds must be >= 1, got {self.seeds}")
        if self.jobs < 1:
            raise InstantFTError(f"--jobs must be >= 1, got {self.jobs}")
        unknown = [s for s in self.only if s not in STUDIES]
        if unknown:
            raise InstantFTError(f"--only: unknown study {', '.join(unknown)}; valid: {', '.join(STUDIES)}")

    def wants(self, study: str) -> bool:
        return not self.only or study in self.only


def reproduce(cfg: ReproduceConfig) -> dict[str, Any]:
    """Run everything, write results.json, tables, plots and report.md into ``cfg.out``."""
    import backbones as backbones_study
    from instantft.analysis.table1 import table1_markdown

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    base = (("epochs", cfg.epochs),) if cfg.epochs is not None else ()
    cells = [(d, float(a)) for d in cfg.datasets for a in cfg.angles]
    if ("rotfmnist", 75.0) not in cells:  # the talk's table
        cells.append(("rotfmnist", 75.0))
    seeds = range(cfg.seeds)
    n, n_eval = cfg.samples, cfg.eval_samples
    groups = []
    if cfg.wants("fig7"):
        groups += [Group("fig7", d, a, s, METHODS, "default", base, n, n_eval) for d, a in cells for s in seeds]
    if cfg.ablation and cfg.wants("ablation"):
        for name, overrides in ABLATION_VARIANTS.items():
            groups += [
                Group("ablation", d, 90.0, s, ABLATION_METHODS, name, tuple(overrides.items()) + base, n, n_eval)
                for d in cfg.datasets
                for s in seeds
            ]
    if cfg.wants("backbones"):
        groups += backbones_study.groups(cfg.backbones, cfg.seeds, cfg.datasets, base, n, n_eval)
    svhn = svhn_groups(cfg, out) if cfg.wants("svhn") else "SVHN N-sweep not requested."
    if isinstance(svhn, list):
        groups += svhn
    results = run_groups(groups, results_path, cfg.jobs, cfg.show_progress, cfg.data_dir)
    extras: dict[str, Any] = {"svhn": svhn if isinstance(svhn, str) else ""}
    if cfg.wants("backbones"):
        extras["backbones"] = backbones_study.write_backbones_report(out, results, cfg.backbones)
    if cfg.only and "timing" not in cfg.only:
        return extras  # a partial run: the main report needs every study
    timing = _timing(out / "timing.json", cfg)
    extras.update(
        cache_sizes=cache_sizes(), timing=timing, table1_markdown=table1_markdown("both", 4),
    )  # fmt: skip
    if cfg.fixedpoint and cfg.wants("fixedpoint"):
        extras["fixedpoint"] = _fixedpoint(out / "fixedpoint", cfg)
    ablation = (ABLATION_VARIANTS, ABLATION_METHODS) if cfg.ablation else None
    report.write_all(out, results, extras, datasets=cfg.datasets, ablation=ablation, command=command(cfg))
    return extras


def command(cfg: ReproduceConfig) -> str:
    """The command line that makes this report (as its first paragraph quotes it)."""
    return f"python studies/fig7.py{' --quick' if cfg.quick else ''} --seeds {cfg.seeds}"


def _timing(path: Path, cfg: ReproduceConfig) -> dict[str, Any]:
    """The time panel, reused from ``path`` only when measured with the same parameters and code."""
    from instantft.machine import machine_info

    machine = machine_info()
    params = {
        "repeats": cfg.timing_repeats,
        "samples": cfg.samples,
        "epochs": cfg.epochs,
        "instantft": machine["instantft"],
        "git_commit": machine["git_commit"],
    }
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if isinstance(old, dict) and old.get("params") == params:
            return dict(old)
    timing = {
        **time_methods(repeats=cfg.timing_repeats, samples=cfg.samples, epochs=cfg.epochs, data_dir=cfg.data_dir),
        "params": params,
        "machine": machine,
    }
    atomic_write_json(path, timing)
    return timing


def svhn_groups(cfg: ReproduceConfig, out: Path) -> list[Group] | str:
    """The SVHN N-sweep (paper §5.1 case 3): pre-train on the first N SVHN-extra images (one
    checkpoint per N, kept in ``out/svhn/``), fine-tune on the train split, evaluate on the test
    split. Returns the groups, or a note saying why the sweep is skipped."""
    from instantft.data import files
    from instantft.pretrain import PretrainConfig, pretrain_to_file
    from instantft.settings import Training

    if not cfg.svhn_ns:
        return "SVHN N-sweep not requested."
    try:
        files.locate("svhn", ["train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"], cfg.data_dir, download=False)
    except InstantFTError as exc:
        return f"SVHN N-sweep skipped: {exc}. SVHN cannot be obtained on the machines this report was made on."
    base = (("epochs", cfg.epochs),) if cfg.epochs is not None else ()
    groups = []
    for n in cfg.svhn_ns:
        ckpt = out / "svhn" / f"lenet5-svhn-extra{n}.safetensors"
        if not ckpt.is_file():
            training = Training(epochs=cfg.epochs or 10, seed=0)
            config = PretrainConfig(dataset="svhn", samples=n, training=training)
            pretrain_to_file(config, ckpt, data_dir=cfg.data_dir, show_progress=cfg.show_progress)
        groups += [
            Group("svhn", "svhn", 0.0, s, METHODS, f"N={n}", base, cfg.svhn_samples, cfg.eval_samples, str(ckpt))
            for s in range(cfg.seeds)
        ]
    return groups


def _fixedpoint(out: Path, cfg: ReproduceConfig) -> dict[str, Any]:
    return fixedpoint_study.run_study(out, seeds=cfg.seeds, quick=cfg.quick, jobs=cfg.jobs, data_dir=cfg.data_dir)




def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/fig7.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, 45° and 90° (a few minutes)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--out", default=str(ReproduceConfig.out), help="default: results/reproduce of this checkout")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation of the unstated defaults")
    p.add_argument("--no-fixedpoint", action="store_true", help="skip the fixed-point column and format sweep")
    p.add_argument("--timing-repeats", type=int, default=5)
    p.add_argument("--only", default=None, help=f"comma-separated studies to run (default all): {', '.join(STUDIES)}")
    p.add_argument("--data-dir", default=None, help="where the datasets are (default: INSTANTFT_DATA or the cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    try:
        cfg = ReproduceConfig(
            out=Path(args.out),
            seeds=args.seeds,
            quick=args.quick,
            jobs=args.jobs,
            timing_repeats=args.timing_repeats,
            ablation=not args.no_ablation,
            fixedpoint=not args.no_fixedpoint,
            show_progress=args.progress,
            data_dir=args.data_dir,
            only=tuple(x.strip() for x in args.only.split(",") if x.strip()) if args.only else (),
        )
        reproduce(cfg)
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
