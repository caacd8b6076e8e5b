"""The fixed-point study: what the FPGA core's arithmetic costs in accuracy, and what it needs on
chip (the FPGA datapath in software):

    python studies/fixedpoint.py --jobs 2 --out results/reproduce/fixedpoint

(a) InstantFT with ``--numerics fixed`` (Q8.16 activations, Q4.12 parameters and gradients, the
    table softmax) against float InstantFT on RotMNIST and RotFMNIST at 90°, same seeds, same
    tasks, same batches; the paper's FPGA lands within 3.2 pts of its software (§5.2).
(b) A sweep of the fractional bits of the activations (parameters at Q4.12) and of the
    parameters/gradients (activations at Q8.16) on RotMNIST 90°, showing where accuracy falls off.

Writes ``fixedpoint.json`` (every run, summaries, the memory estimate), ``fixedpoint.md`` and
``fixedpoint_formats.png`` into ``--out``, atomically. Finished runs are kept in
``fixedpoint_runs.json`` after every group, so an interrupted study resumes where it stopped.
fig7.py runs it into ``results/reproduce/fixedpoint`` and puts its tables in ``report.md``.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ROOT, StudyParser, pyplot, run_pending, save_png
from instantft.errors import InstantFTError
from instantft.fileio import atomic_write_json, atomic_write_text
from instantft.fixedpoint.formats import ACT_FORMAT, PARAM_FORMAT, FixedPointConfig, QFormat, Rounding
from instantft.progress import progress_bar

DATASETS = ("rotmnist", "rotfmnist")
ANGLE = 90.0
SWEEP_DATASET = "rotmnist"
SWEEP_SEEDS = 2
ACT_FRAC_BITS = (16, 12, 10, 8, 6, 4, 3, 2, 1, 0)
PARAM_FRAC_BITS = (12, 10, 8, 7, 6, 5, 4)
QUICK_ACT_FRAC_BITS = (16, 4, 1)
QUICK_PARAM_FRAC_BITS = (12, 7, 5)
PAPER_FPGA_GAP = 3.2  # pts, §5.2: the FPGA is within 3.2 % of its software counterpart
TARGET_GAP = 1.0  # pts, the target set for the datapath
FALL_OFF = 1.0  # pts below float: where a format "falls off"


@dataclass(frozen=True)
class Variant:
    """One arm of the study: float, or fixed with given formats."""

    name: str
    act: QFormat | None = None
    param: QFormat | None = None
    rounding: Rounding = "round-half-up"

    @property
    def fixed(self) -> FixedPointConfig | None:
        if self.act is None or self.param is None:
            return None
        return FixedPointConfig(act_format=str(self.act), param_format=str(self.param), rounding=self.rounding)


FLOAT = Variant("float")
DEFAULT = Variant("fixed", ACT_FORMAT, PARAM_FORMAT)
TRUNCATE = Variant("fixed-truncate", ACT_FORMAT, PARAM_FORMAT, "truncate")  # AP_TRN, the HLS default


def act_variant(frac: int) -> Variant:
    fmt = QFormat(ACT_FORMAT.int_bits, frac)
    return DEFAULT if fmt == ACT_FORMAT else Variant(f"act-{fmt}", fmt, PARAM_FORMAT)


def param_variant(frac: int) -> Variant:
    fmt = QFormat(PARAM_FORMAT.int_bits, frac)
    return DEFAULT if fmt == PARAM_FORMAT else Variant(f"param-{fmt}", ACT_FORMAT, fmt)


@dataclass(frozen=True)
class Group:
    """Runs sharing a task and a backbone: one (dataset, seed)."""

    dataset: str
    seed: int
    variants: tuple[Variant, ...]
    samples: int = 1024
    eval_samples: int | None = None
    checkpoint: str | None = None


def run_key(dataset: str, seed: int, variant: str) -> str:
    return f"{dataset}/seed{seed}/{variant}"


def compact(record: dict[str, Any], variant: str, keep_counters: bool) -> dict[str, Any]:
    """What the study keeps of a run record (full counters only where asked: they are long)."""
    keys = ("dataset", "angle", "seed", "numerics", "samples", "eval_samples", "accuracy_before", "accuracy_after")
    out = {k: record[k] for k in keys} | {"variant": variant, "finetune_seconds": record["finetune_seconds"]}
    fx = record.get("fixed_point")
    if fx:
        out |= {k: fx[k] for k in ("act_format", "param_format", "rounding", "saturated", "underflow")}
        out["saturating_tensors"] = fx["saturating_tensors"]
        out["memory_bits"] = fx["memory"]["total_bits"]
        worst = sorted(fx["counters"].items(), key=lambda kv: -kv[1]["underflow"] / max(kv[1]["values"], 1))
        out["most_underflow"] = {k: round(v["underflow"] / max(v["values"], 1), 4) for k, v in worst[:5]}
        if keep_counters:
            out["counters"] = fx["counters"]
    return out


def run_group(group: Group, threads: int | None = 1, data_dir: str | None = None) -> list[dict[str, Any]]:
    """Every variant of a group on one task and backbone (in a worker process or inline)."""
    import torch

    from instantft.data import make_task
    from instantft.run import Prepared, Run, config_for, finetune, load_backbone
    from instantft.settings import Task

    if threads is not None:
        torch.set_num_threads(threads)  # a worker process's entry
    backbone = load_backbone(group.dataset, group.checkpoint)
    config = config_for(group.dataset, seed=group.seed)
    task = make_task(
        group.dataset, angle=ANGLE, samples=group.samples, seed=group.seed, eval_samples=group.eval_samples,
        data_dir=data_dir,
    )
    prepared = Prepared(backbone[0], backbone[1], task)
    spec = Task(dataset=group.dataset, angle=ANGLE, samples=group.samples, eval_samples=group.eval_samples)
    out = []
    for v in group.variants:
        rec = finetune(Run(method="instantft", task=spec, config=config, fixed=v.fixed), prepared=prepared).record
        out.append(compact(rec, v.name, keep_counters=v == DEFAULT and group.seed == 0))
    return out


def _load(path: Path) -> dict[str, dict[str, Any]]:
    from instantft.records import StudyRunRecord, parse_json, validate_list

    if not path.is_file():
        return {}
    runs = parse_json(path.read_bytes(), f"{path} (move it away to start afresh)", max_bytes=1 << 28)
    validate_list(StudyRunRecord, runs, str(path))
    return {run_key(r["dataset"], r["seed"], r["variant"]): r for r in runs}


def run_groups(
    groups: Sequence[Group], path: Path, jobs: int, show_progress: bool, data_dir: str | None = None
) -> dict[str, dict[str, Any]]:
    """Run what is not yet in ``path`` (saved after every group); all runs by key."""
    done = _load(path)
    todo = []
    for g in groups:
        missing = tuple(v for v in g.variants if run_key(g.dataset, g.seed, v.name) not in done)
        if missing:
            todo.append(Group(g.dataset, g.seed, missing, g.samples, g.eval_samples, g.checkpoint))
    total = sum(len(g.variants) for g in groups)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("fixed point", total=total, completed=total - sum(len(g.variants) for g in todo), status="")

        def finish(records: list[dict[str, Any]], g: Group) -> None:
            for r in records:
                done[run_key(r["dataset"], r["seed"], r["variant"])] = r
            atomic_write_json(path, list(done.values()))
            bar.advance(task, len(records))
            bar.update(task, status=f"{g.dataset} seed {g.seed}")

        work = functools.partial(run_group, data_dir=data_dir)
        run_pending(todo, work, lambda g, records: finish(records, g), jobs)
    return done


# --- summaries ------------------------------------------------------------------------------------
def mean_std(xs: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "n": len(xs),
    }


def _acc(runs: dict[str, dict[str, Any]], dataset: str, seeds: Sequence[int], variant: str) -> list[float]:
    return [100 * runs[run_key(dataset, s, variant)]["accuracy_after"] for s in seeds]


def summarise_comparison(runs: dict[str, dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    out = {}
    for d in DATASETS:
        fl, fx = _acc(runs, d, seeds, FLOAT.name), _acc(runs, d, seeds, DEFAULT.name)
        base_fl = [100 * runs[run_key(d, s, FLOAT.name)]["accuracy_before"] for s in seeds]
        base_fx = [100 * runs[run_key(d, s, DEFAULT.name)]["accuracy_before"] for s in seeds]
        out[d] = {
            "float": mean_std(fl),
            "fixed": mean_std(fx),
            "gap": mean_std([b - a for a, b in zip(fl, fx, strict=True)]),  # fixed - float, paired by seed
            "before_float": mean_std(base_fl),
            "before_fixed": mean_std(base_fx),
            "saturated_runs": sum(1 for s in seeds if runs[run_key(d, s, DEFAULT.name)]["saturating_tensors"]),
        }
    return out


def summarise_sweep(
    runs: dict[str, dict[str, Any]], seeds: Sequence[int], act_fracs: Sequence[int], param_fracs: Sequence[int]
) -> dict[str, Any]:
    ref = mean_std(_acc(runs, SWEEP_DATASET, seeds, FLOAT.name))
    trunc = mean_std(_acc(runs, SWEEP_DATASET, seeds, TRUNCATE.name))
    out: dict[str, Any] = {
        "float": ref,
        "seeds": list(seeds),
        "rounding": {
            "round-half-up": mean_std(_acc(runs, SWEEP_DATASET, seeds, DEFAULT.name)),
            "truncate": trunc,
        },
    }
    for axis, fracs, make in (("act", act_fracs, act_variant), ("param", param_fracs, param_variant)):
        rows = []
        for f in fracs:
            v = make(f)
            recs = [runs[run_key(SWEEP_DATASET, s, v.name)] for s in seeds]
            acc = mean_std([100 * r["accuracy_after"] for r in recs])
            rows.append(
                {
                    "frac_bits": f,
                    "act_format": str(v.act),
                    "param_format": str(v.param),
                    "accuracy": acc,
                    "drop": ref["mean"] - acc["mean"],
                    "saturating_tensors": sorted({t for r in recs for t in r["saturating_tensors"]}),
                    "most_underflow": recs[0]["most_underflow"],
                    "memory_bits": recs[0]["memory_bits"],
                }
            )
        fine = [r["frac_bits"] for r in rows if r["drop"] <= FALL_OFF]
        out[axis] = {
            "rows": rows,
            # the fewest fractional bits from which every wider setting stays within FALL_OFF of float
            "min_frac_bits_within_1pt": _min_ok([(r["frac_bits"], r["drop"] <= FALL_OFF) for r in rows]),
            "any_within": bool(fine),
        }
    return out


def _min_ok(points: list[tuple[int, bool]]) -> int | None:
    best = None
    for frac, ok in sorted(points, reverse=True):
        if not ok:
            break
        best = frac
    return best


# --- outputs --------------------------------------------------------------------------------------
def plot(sweep: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    ref = sweep["float"]
    titles = {
        "act": f"activations Q{ACT_FORMAT.int_bits}.n (parameters {PARAM_FORMAT})",
        "param": f"parameters/gradients Q{PARAM_FORMAT.int_bits}.n (activations {ACT_FORMAT})",
    }
    for ax, axis in zip(axes, ("act", "param"), strict=True):
        rows = sweep[axis]["rows"]
        xs = [r["frac_bits"] for r in rows]
        ax.errorbar(
            xs,
            [r["accuracy"]["mean"] for r in rows],
            yerr=[r["accuracy"]["std"] for r in rows],
            marker="o",
            capsize=3,
            label="fixed point",
        )
        ax.axhline(ref["mean"], color="k", linestyle="--", linewidth=1, label="float InstantFT")
        ax.axhspan(ref["mean"] - FALL_OFF, ref["mean"], color="0.85", label=f"within {FALL_OFF:g} pt of float")
        ax.set_title(titles[axis], fontsize=9)
        ax.set_xticks(xs, [f"{r['frac_bits']}\n{r['memory_bits'] / 1e6:.2f}" for r in rows], fontsize=7)
        ax.set_xlabel("fractional bits n (on-chip memory estimate, Mbit)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy after fine-tuning (%), {SWEEP_DATASET} {ANGLE:g}°")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("fixed-point InstantFT vs float: where the formats fall off", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def fall_off_sentence(label: str, axis: dict[str, Any]) -> str:
    """Where one axis of the sweep leaves the FALL_OFF band, in words."""
    rows, m = axis["rows"], axis["min_frac_bits_within_1pt"]
    if m is None:
        return f"{label.capitalize()}: no setting is within {FALL_OFF:g} pt of float."
    fmt_key = "act_format" if label.startswith("act") else "param_format"
    ok = next(r for r in rows if r["frac_bits"] == m)
    out = f"{label.capitalize()}: within {FALL_OFF:g} pt of float down to {ok[fmt_key]} ({ok['drop']:.2f} pts below)"
    below = [r for r in rows if r["frac_bits"] < m]
    if below:
        out += "; then " + ", ".join(f"{r[fmt_key]} {r['drop']:.2f}" for r in below) + " pts below"
    return out + "."


def _pm(s: dict[str, float]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(result: dict[str, Any], image: str) -> str:
    """The study as Markdown sections (### headings, so it can sit inside a larger report)."""
    from instantft.fixedpoint.memory import memory_markdown

    cmp_, sweep, setup = result["comparison"], result["sweep"], result["setup"]
    lines = [
        f"InstantFT with `--numerics fixed`: every operation of the FPGA core in integer arithmetic "
        f"(`instantft.fixedpoint`), activations {ACT_FORMAT}, parameters and gradients {PARAM_FORMAT} "
        f"(Qm.n: m integer bits including the sign), {setup['rounding']}, table softmax "
        f"({setup['softmax_table_size']} entries, range {setup['softmax_range']:g}). {setup['samples']} fine-tuning "
        f"samples, 10 epochs, batch 20, lr 0.1 (the float method's defaults), evaluation on "
        + ("the rest of the test split." if setup["eval_samples"] is None else f"{setup['eval_samples']} samples.")
        + (" Quick mode: fewer seeds and sweep points." if setup["quick"] else ""),
        "",
        f"### Accuracy: fixed point vs float ({ANGLE:g}°, {setup['seeds']} seeds, mean ± std)",
        "",
        "| dataset | float InstantFT % | fixed-point InstantFT % | gap (fixed − float, paired) | "
        "before fine-tuning float / fixed % |",
        "|---|---:|---:|---:|---:|",
    ]
    for d, s in cmp_.items():
        lines.append(
            f"| {d} | {_pm(s['float'])} | {_pm(s['fixed'])} | {s['gap']['mean']:+.2f} ± {s['gap']['std']:.2f} | "
            f"{s['before_float']['mean']:.2f} / {s['before_fixed']['mean']:.2f} |"
        )
    worst = max(abs(s["gap"]["mean"]) for s in cmp_.values())
    lines += [
        "",
        f"Largest mean gap {worst:.2f} pts: {'within' if worst <= TARGET_GAP else 'outside'} the {TARGET_GAP:g}-pt "
        f"target (the paper's FPGA: within {PAPER_FPGA_GAP} pts of its software).",
        "",
        f"### Format sweep ({SWEEP_DATASET} {ANGLE:g}°, seeds {', '.join(map(str, sweep['seeds']))}; "
        f"float: {_pm(sweep['float'])} %)",
        "",
    ]
    for axis, label in (("act", "activations"), ("param", "parameters and gradients")):
        lines += [
            f"| {label} format | accuracy % | below float (pts) | on-chip Mbit | saturating | most underflow |",
            "|---|---:|---:|---:|---|---|",
        ]
        for r in sweep[axis]["rows"]:
            fmt = r["act_format"] if axis == "act" else r["param_format"]
            under = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(r["most_underflow"].items())[:2])
            sats = r["saturating_tensors"]
            sat = ", ".join(sats[:3]) + (f" and {len(sats) - 3} more" if len(sats) > 3 else "") if sats else "-"
            lines.append(
                f"| {fmt} | {_pm(r['accuracy'])} | {r['drop']:.2f} | {r['memory_bits'] / 1e6:.2f} | {sat} | {under} |"
            )
        lines += ["", fall_off_sentence(label, sweep[axis]), ""]
    rd = sweep["rounding"]
    g_lsb = 2.0**-PARAM_FORMAT.frac_bits
    lines += [
        f"Rounding, default formats: round-half-up {_pm(rd['round-half-up'])} %, truncate (`AP_TRN`, the HLS "
        f"default) {_pm(rd['truncate'])} %. With {len(sweep['seeds'])} seeds, differences of a few tenths of a "
        "point are seed noise; the paired fixed − float gaps above are the precise comparison.",
        "",
        f"Where precision goes at the default formats: the output gradient g = (p − onehot)/20 is a "
        f"{PARAM_FORMAT} word (step {g_lsb:.2g}), so a class probability below {20 * g_lsb / 2:.4f} gives g = 0 "
        "(`grad.output` underflow), and small g·B_k and lr·dA products vanish the same way; the activation "
        "format matters little because activations are large next to its step.",
        "",
        f"![accuracy vs fractional bits]({image})",
        "",
        "`saturating`: tensors where some value hit the format's limit; `softmax.exp_index` saturates whenever a "
        "logit is more than the table range below its row's maximum (its probability is then < e^-8, expected). "
        "`most underflow`: tensors with the largest share of nonzero values rounded to 0.",
        "",
        "### On-chip memory estimate (default formats)",
        "",
        memory_markdown(result["memory"]),
        "Not counted: the Forward Cache itself (in DRAM: "
        f"{result['memory']['forward_cache_dram_bytes_per_sample']:.0f} B a sample), conv line buffers, "
        "duplication by array partitioning. For scale, the KV260's K26 SoM has 144 BRAM36 (5.1 Mbit) and 64 URAM "
        "(18 Mbit).",
        "",
        "### Choices the paper leaves open",
        "",
        "- Qm.n counts the sign in m (Q8.16 = 24-bit `ap_fixed<24,8>`, Q4.12 = 16-bit); overflow saturates.",
        "- Every MAC accumulates exactly (a wide accumulator seeded with the bias) and rounds once into its "
        "output format; the rounding mode is an option (round-half-up default, truncate).",
        "- Activation format for: inputs, layer outputs, NF4 absmax scales and dequantised values, adapter "
        "projections h_k and deltas, logits, softmax tables, sums and probabilities. Parameter format for: "
        "weights, biases, adapters, the output gradient g = (p − onehot)/batch, g·B_k, dA, dB, lr·grad and lr.",
        "- Each adapter's delta is rounded on its own (the five modules run in parallel), then summed with "
        "saturating adds into f(x).",
        "- Softmax (hls4ml-style, the paper's [12]): subtract the row max, exp table over [0, range) indexed by "
        "a bit slice (bin centres), reciprocal table over [0, 2^⌈log2 classes⌉).",
        "- NF4 levels are Q2.16 constants; the nearest-level decision is exact integer comparison.",
        "",
    ]
    return "\n".join(lines)


def run_study(
    out_dir: str | os.PathLike[str],
    seeds: int = 10,
    quick: bool = False,
    jobs: int = 1,
    *,
    samples: int = 1024,
    eval_samples: int | None = None,
    checkpoints: dict[str, str] | None = None,
    show_progress: bool = True,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study into ``out_dir``; returns the summaries, the memory estimate and
    ``markdown`` (image linked as ``<out_dir name>/fixedpoint_formats.png``, i.e. relative to the
    parent directory, where fig7.py writes its report).

    ``quick``: at most 2 seeds, one sweep seed and three points per axis. ``checkpoints``:
    backbone per dataset (default: the bundled ones)."""
    from instantft.fixedpoint.memory import memory_estimate

    if seeds < 1 or jobs < 1:
        raise InstantFTError(f"seeds and jobs must be >= 1, got {seeds} and {jobs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = min(seeds, 2) if quick else seeds
    sweep_seeds = list(range(min(seeds, 1 if quick else SWEEP_SEEDS)))
    act_fracs = QUICK_ACT_FRAC_BITS if quick else ACT_FRAC_BITS
    param_fracs = QUICK_PARAM_FRAC_BITS if quick else PARAM_FRAC_BITS
    ckpt = checkpoints or {}
    sweep_variants = tuple(dict.fromkeys([*map(act_variant, act_fracs), *map(param_variant, param_fracs)]))
    groups = []
    for d in DATASETS:
        for s in range(seeds):
            variants: tuple[Variant, ...] = (FLOAT, DEFAULT)
            if d == SWEEP_DATASET and s in sweep_seeds:
                variants = tuple(dict.fromkeys([*variants, *sweep_variants, TRUNCATE]))
            groups.append(Group(d, s, variants, samples, eval_samples, ckpt.get(d)))
    runs = run_groups(groups, out / "fixedpoint_runs.json", jobs, show_progress, data_dir)
    default = FixedPointConfig()
    result: dict[str, Any] = {
        "setup": {
            "angle": ANGLE,
            "seeds": seeds,
            "samples": samples,
            "eval_samples": eval_samples,
            "quick": quick,
            **default.to_dict(),
        },
        "comparison": summarise_comparison(runs, range(seeds)),
        "sweep": summarise_sweep(runs, sweep_seeds, act_fracs, param_fracs),
        "memory": memory_estimate(default),
    }
    plot(result["sweep"], out / "fixedpoint_formats.png")
    body = markdown(result, "fixedpoint_formats.png")
    atomic_write_text(out / "fixedpoint.md", "# Fixed-point InstantFT: the FPGA datapath in software\n\n" + body)
    keys = [run_key(g.dataset, g.seed, v.name) for g in groups for v in g.variants]
    atomic_write_json(out / "fixedpoint.json", {**result, "runs": [runs[k] for k in keys]})
    return {**result, "markdown": markdown(result, f"{out.name}/fixedpoint_formats.png")}


def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/fixedpoint.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="at most 2 seeds, one sweep seed, three points per axis")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce" / "fixedpoint"))
    p.add_argument("--data-dir", default=None, help="where the datasets are (default: INSTANTFT_DATA or the cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    try:
        run_study(args.out, args.seeds, args.quick, args.jobs, show_progress=args.progress, data_dir=args.data_dir)
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {Path(args.out) / 'fixedpoint.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
