"""The any-backbone study: every method on the bundled MLP and ResNet-8 under the paper's
RotMNIST / RotFMNIST 90° protocol (same seeds, same task), side by side with LeNet-5's Fig. 7
runs; writes ``backbones.md`` and ``backbones.png`` beside ``results.json``:

    python studies/backbones.py --jobs 2 --out results/reproduce

fig7.py runs it too (``--only backbones`` there adds it to a finished Fig. 7 run). Runs already in
``results.json`` are kept; LeNet-5's column is whatever Fig. 7 runs at 90° the file holds.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import METHODS, ROOT, Group, StudyParser, pyplot, run_groups, save_png
from instantft.errors import InstantFTError
from instantft.fileio import atomic_write_text

#: the bundled non-paper backbones of the study (LeNet-5's runs come from Fig. 7)
FAMILIES = ("mlp", "resnet8")
#: the learning rate of the study on a backbone where the paper's (0.1) diverges: ResNet-8's
#: 6,272-wide taps and BatchNorm-free fine-tuning (eval mode) blow up at 0.1 for 5 of 8 methods
#: (seed-0 probe: 0.03 still diverges for ft-all, 0.01 trains every method)
BACKBONE_LR: dict[str, float] = {"resnet8": 0.01}
PAPER_LR_SEEDS = 2
DATASETS = ("rotmnist", "rotfmnist")
NAMES = {"lenet5": "LeNet-5", "mlp": "MLP", "resnet8": "ResNet-8"}


def label(variant: str, runs: Sequence[dict[str, Any]]) -> str:
    """Column name: the backbone, and the learning rate where the study tunes it."""
    family = variant.split(",")[0]
    name = NAMES.get(family, family)
    lrs = sorted({r["lr"] for r in runs})
    return f"{name} (lr {', '.join(f'{v:g}' for v in lrs)})" if family == "resnet8" and lrs else name


def _runs(results: Sequence[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """LeNet-5: the Fig. 7 runs at 90°; the others: this study's runs of that variant."""
    if variant == "lenet5":
        return [r for r in results if r["study"] == "fig7" and float(r["angle"]) == 90.0
                and r.get("variant", "default") == "default"]  # fmt: skip
    return [r for r in results if r["study"] == "backbones" and r.get("variant") == variant]


def variants(results: Sequence[dict[str, Any]], families: Sequence[str]) -> list[str]:
    """LeNet-5, then each family's variants in the order they appear (tuned lr first)."""
    seen = dict.fromkeys(r["variant"] for r in results if r["study"] == "backbones"
                         and r.get("backbone") in families)  # fmt: skip
    return ["lenet5", *(v for f in families for v in sorted(seen, key=len) if v.split(",")[0] == f)]


def summarise(results: Sequence[dict[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    """(variant -> dataset -> method) -> accuracy mean/std in %, median seconds, cache bytes,
    params; ``"label"`` names the column."""
    out: dict[str, Any] = {}
    for variant in variants(results, families):
        cells: dict[str, dict[str, Any]] = {}
        runs = _runs(results, variant)
        for r in runs:
            cells.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r)
        out[variant] = {
            dataset: {
                method: {
                    "mean": statistics.fmean(100 * r["accuracy_after"] for r in rs),
                    "std": statistics.stdev([100 * r["accuracy_after"] for r in rs]) if len(rs) > 1 else 0.0,
                    "n": len(rs),
                    "diverged": sum(1 for r in rs if r.get("diverged")),
                    "before": statistics.fmean(100 * r["accuracy_before"] for r in rs),
                    "seconds": statistics.median(r["finetune_seconds"] for r in rs),
                    "cache_bytes": max(r["cache_bytes"] for r in rs),
                    "trainable_params": rs[0].get("trainable_params"),
                    "samples": rs[0]["samples"],
                    "eval_samples": rs[0]["eval_samples"],
                    "commits": sorted({str(r.get("git_commit")) for r in rs}),
                }
                for method, rs in by_method.items()
            }
            for dataset, by_method in cells.items()
        }
        out[variant]["label"] = label(variant, runs)
    return out


def _fmt(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    div = f" ({cell['diverged']} div.)" if cell["diverged"] else ""
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}{div}"


def markdown(summary: dict[str, Any], methods: Sequence[str]) -> str:
    families = list(summary)
    lines = ["# Every method on three backbones (RotMNIST / RotFMNIST, θ = 90°)", ""]
    any_cell = next(c for f in families for k, d in summary[f].items() if k != "label" for c in d.values())
    lines.append("Made by `python studies/backbones.py` (LeNet-5's column: the Fig. 7 runs at 90°). "
                 f"Accuracy on the {any_cell['eval_samples']:,} held-out images in %, mean ± std over seeds; "
                 "s: median fine-tune seconds; params: trained values; cache: Forward Cache bytes for the "
                 f"{any_cell['samples']:,} fine-tuning samples. Times are only comparable within a column: the "
                 "columns were measured in different runs (see the commits below).")  # fmt: skip
    for dataset in ("rotmnist", "rotfmnist"):
        present = [f for f in families if dataset in summary[f]]
        if not present:
            continue
        lines += ["", f"## {dataset}", ""]
        names = [summary[f]["label"] for f in present]
        head = ["method", *(f"{n} acc." for n in names), *(f"{n} s" for n in names), *(f"{n} params" for n in names)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in methods:
            cells = [summary[f][dataset].get(m) for f in present]
            row = [m, *(_fmt(c) for c in cells),
                   *(f"{c['seconds']:.3f}" if c else "–" for c in cells),
                   *(f"{c['trainable_params']:,}" if c and c["trainable_params"] is not None else "–" for c in cells)]
            lines.append("| " + " | ".join(row) + " |")
        caches = [(f, summary[f][dataset].get(m)) for f in present for m in ("skip2-lora", "instantft")]
        lines += ["", "Forward Cache: " + "; ".join(
            f"{summary[f]['label']} {c['cache_bytes'] / 1e6:.2f} MB" + (" (NF4)" if i % 2 else " (fp32)")
            for i, (f, c) in enumerate(caches) if c)]  # fmt: skip
        commits = {f: sorted({c for m in summary[f][dataset].values() for c in m["commits"]}) for f in present}
        lines.append("Runs made at commit: " + "; ".join(f"{summary[f]['label']} {', '.join(c)}"
                                                        for f, c in commits.items()) + ".")  # fmt: skip
        n = {f: {summary[f][dataset][m]["n"] for m in summary[f][dataset]} for f in present}
        lines.append("Seeds per cell: " + "; ".join(f"{summary[f]['label']} {', '.join(map(str, sorted(v)))}"
                                                    for f, v in n.items()) + ".")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], methods: Sequence[str], path: Path) -> None:
    plt = pyplot()

    families = list(summary)
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), sharex=True)
    width = 0.8 / len(families)
    for col, dataset in enumerate(("rotmnist", "rotfmnist")):
        for j, f in enumerate(families):
            cells = [summary[f].get(dataset, {}).get(m) for m in methods]
            xs = [i + (j - (len(families) - 1) / 2) * width for i in range(len(methods))]
            acc = [c["mean"] if c else math.nan for c in cells]
            err = [c["std"] if c else 0.0 for c in cells]
            axes[0, col].bar(xs, acc, width, yerr=err, capsize=2, label=summary[f]["label"])
            secs = [c["seconds"] if c and c["seconds"] > 0 else math.nan for c in cells]  # "none" takes 0 s
            axes[1, col].bar(xs, secs, width, label=summary[f]["label"])
        axes[0, col].set_title(f"{dataset}, 90°: accuracy after fine-tuning")
        axes[0, col].set_ylabel("accuracy (%)")
        axes[0, col].set_ylim(0, 100)
        if any(dataset in summary[f] for f in families):
            axes[1, col].set_yscale("log")
        axes[1, col].set_ylabel("fine-tune time (s, log)")
        axes[1, col].set_xticks(range(len(methods)), methods, rotation=35, ha="right")
    axes[0, 0].legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def groups(
    families: Sequence[str],
    seeds: int,
    datasets: Sequence[str] = DATASETS,
    base: tuple[tuple[str, Any], ...] = (),
    samples: int = 1024,
    eval_samples: int | None = None,
) -> list[Group]:
    """Every method on each family at 90°, seed-major (an interrupted study still covers every
    dataset, with fewer seeds); where the study tunes the lr, the paper's lr too on fewer seeds."""
    out = []
    for family in families:
        lr = BACKBONE_LR.get(family)
        tuned = (("lr", lr),) if lr is not None else ()
        out += [Group("backbones", d, 90.0, s, METHODS, family, base + tuned, samples, eval_samples, backbone=family)
                for s in range(seeds) for d in datasets]  # fmt: skip
        if lr is not None:  # the paper's lr on this backbone too, on fewer seeds: what it does there
            out += [Group("backbones", d, 90.0, s, METHODS, f"{family}, paper lr", base, samples, eval_samples,
                          backbone=family) for s in range(min(seeds, PAPER_LR_SEEDS)) for d in datasets]  # fmt: skip
    return out


def write_backbones_report(out: Path, results: Sequence[dict[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    summary = summarise(results, families)
    atomic_write_text(out / "backbones.md", markdown(summary, METHODS))
    plot(summary, METHODS, out / "backbones.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/backbones.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce"), help="the folder of results.json")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated bundled backbones")
    p.add_argument("--data-dir", default=None, help="where the datasets are (default: INSTANTFT_DATA or the cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    out = Path(args.out)
    try:
        if args.seeds < 1 or args.jobs < 1:
            raise InstantFTError(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
        out.mkdir(parents=True, exist_ok=True)
        results = run_groups(groups(families, args.seeds), out / "results.json", args.jobs, args.progress,
                             args.data_dir, description="backbones")  # fmt: skip
        write_backbones_report(out, results, families)
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"table written to {out / 'backbones.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
