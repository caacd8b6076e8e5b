"""The ``instantft`` command line: each subcommand is a plain function taking parsed arguments.

User errors (:class:`InstantFTError`) print one line, ``error: ...``, and exit with status 2.
Subcommands living elsewhere (table1, reproduce, bench) register through :data:`PARSERS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from instantft.errors import InstantFTError

if TYPE_CHECKING:
    from instantft.methods import FineTuneConfig

Sub = Any  # argparse's private _SubParsersAction


def common() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir", default=None, help="where dataset files are looked for first")
    return p


# --- pretrain ---------------------------------------------------------------------------------
def cmd_pretrain(args: argparse.Namespace) -> int:
    from instantft.fileio import ensure_writable
    from instantft.pretrain import PretrainConfig, pretrain_to_file

    config = PretrainConfig(args.dataset, args.samples, args.epochs, args.batch_size, args.lr, args.seed)
    from instantft.data.files import existing_files

    out = ensure_writable(args.out or f"lenet5-{args.dataset}.safetensors", existing_files(args.dataset, args.data_dir))
    meta = pretrain_to_file(config, out, data_dir=args.data_dir, show_progress=not args.json)
    if args.json:
        print(json.dumps({**meta, "out": str(out)}))
    else:
        print(f"test accuracy {meta['test_accuracy']:.4f}; checkpoint written to {out}")
    return 0


def add_pretrain(sub: Sub) -> None:
    p = sub.add_parser("pretrain", parents=[common()], help="pre-train a LeNet-5 backbone (paper §5.1)")
    p.add_argument("--dataset", choices=["mnist", "fmnist", "svhn"], required=True)
    p.add_argument("--samples", type=int, default=None, help="first N training samples (default: all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--lr", type=float, default=None, help="default 0.1 (0.025 for svhn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint file (default lenet5-DATASET.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")
    p.set_defaults(func=cmd_pretrain)


# --- finetune ---------------------------------------------------------------------------------
def add_finetune_options(p: argparse.ArgumentParser) -> None:
    """The fine-tuning hyper-parameters (FineTuneConfig), shared by finetune and reproduce."""
    p.add_argument("--rank", type=int, default=None, help="LoRA rank r (default 4)")
    p.add_argument("--epochs", type=int, default=None, help="default 10")
    p.add_argument("--batch-size", type=int, default=None, help="default 20")
    p.add_argument("--lr", type=float, default=None, help="default 0.1 (svhn 0.025)")
    p.add_argument("--scale", type=float, default=None, help="LoRA output multiplier alpha/r (default 1)")
    p.add_argument("--init", choices=["gaussian", "kaiming"], default=None, help="init of A (default gaussian)")
    p.add_argument("--init-std", type=float, default=None, help="std of the Gaussian init of A")
    p.add_argument("--init-seed", type=int, default=None, help="adapter init seed (default: --seed)")
    p.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop each epoch's last partial batch (default: drop)",
    )
    p.add_argument("--cache-fill", choices=["batched", "lazy"], default=None)
    p.add_argument("--cache-max-bytes", type=int, default=None, help="fail if the forward cache grows past this")
    p.add_argument(
        "--engine",
        choices=["auto", "numba", "torch", "reference"],
        default=None,
        help="training loop of skip-lora/skip2-lora/instantft (default auto: numba if installed, else torch)",
    )


def config_from_args(args: argparse.Namespace, dataset: str, seed: int) -> FineTuneConfig:
    from instantft.run import config_for

    return config_for(
        dataset,
        seed=seed,
        rank=args.rank,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        scale=args.scale,
        init=args.init,
        init_std=args.init_std,
        init_seed=args.init_seed,
        drop_last=args.drop_last,
        cache_fill=args.cache_fill,
        cache_max_bytes=args.cache_max_bytes,
        engine=args.engine,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    from instantft.methods import method_names
    from instantft.methods.adapter_io import save_adapter
    from instantft.run import finetune

    if args.method not in method_names():
        raise InstantFTError(f"unknown method {args.method!r}; valid: {', '.join(method_names())}")
    from instantft.fileio import ensure_writable
    from instantft.fixedpoint import describe, numerics_config

    if args.save_adapter:
        from instantft.data.files import existing_files
        from instantft.run import base_dataset

        inputs = [args.checkpoint, *existing_files(base_dataset(args.dataset), args.data_dir)]
        ensure_writable(args.save_adapter, inputs)
    if args.threads is not None and args.threads < 1:
        raise InstantFTError(f"--threads must be >= 1, got {args.threads}")
    config = config_from_args(args, args.dataset, args.seed)
    fixed = numerics_config(
        args.numerics, args.act_format, args.param_format, args.rounding, args.softmax_table_size, args.softmax_range
    )
    result = finetune(
        args.method,
        args.dataset,
        angle=args.angle,
        samples=args.samples,
        config=config,
        checkpoint=args.checkpoint,
        eval_samples=args.eval_samples,
        data_dir=args.data_dir,
        threads=args.threads,
        numerics=args.numerics,
        fixed=fixed,
    )
    record = result.record
    if args.save_adapter:
        task = {k: record[k] for k in ("dataset", "angle", "seed", "samples")}
        extra = {"task": {**task, "eval_samples": args.eval_samples}, "numerics": args.numerics}
        if fixed is not None:
            extra["fixed"] = fixed.to_dict()
        save_adapter(args.save_adapter, result.method, extra)
        record["adapter"] = str(args.save_adapter)
    if args.json:
        print(json.dumps(record))
    else:
        from instantft.tables import print_runs

        print_runs([record], title=f"{args.dataset} {record['angle']:g}°, seed {args.seed}")
        print(describe(record))
    return 0


def add_finetune(sub: Sub) -> None:
    p = sub.add_parser("finetune", parents=[common()], help="fine-tune a backbone on drifted data")
    p.add_argument("--dataset", required=True, help="rotmnist, rotfmnist or svhn")
    p.add_argument(
        "--method",
        required=True,
        help="none, ft-all, ft-last, ft-bias, lora-all, lora-last, skip-lora, skip2-lora, instantft",
    )
    p.add_argument("--angle", type=float, default=None, help="rotation in degrees (rot* datasets; default 90)")
    p.add_argument("--samples", type=int, default=1024, help="fine-tuning samples")
    p.add_argument("--eval-samples", type=int, default=None, help="limit the evaluation set (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="backbone (default: the bundled one)")
    p.add_argument("--save-adapter", default=None, help="write the trained tensors here (.safetensors)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    add_finetune_options(p)
    fx = p.add_argument_group("fixed-point numerics (the FPGA datapath, instantft only)")
    fx.add_argument("--numerics", choices=["float", "fixed"], default="float", help="default float")
    fx.add_argument("--act-format", default=None, help="activations, Qm.n with m counting the sign (default Q8.16)")
    fx.add_argument("--param-format", default=None, help="parameters and gradients (default Q4.12)")
    fx.add_argument("--rounding", choices=["round-half-up", "truncate"], default=None, help="default round-half-up")
    fx.add_argument("--softmax-table-size", type=int, default=None, help="entries per softmax table (default 1024)")
    fx.add_argument("--softmax-range", type=float, default=None, help="exp table input range (default 8)")
    p.set_defaults(func=cmd_finetune)


# --- evaluate ---------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Base + adapter on the evaluation set of the task the adapter was fine-tuned on (its file
    records dataset, angle, split seed and sizes); options given override the record."""
    from instantft.data import make_task
    from instantft.methods.adapter_io import load_adapter, read_adapter_record
    from instantft.models import accuracy
    from instantft.run import load_backbone

    trained = read_adapter_record(args.adapter).get("task", {})
    dataset = args.dataset or trained.get("dataset")
    if dataset is None:
        raise InstantFTError(f"{args.adapter}: adapter records no dataset; pass --dataset")
    if trained.get("dataset") not in (None, dataset):
        raise InstantFTError(f"{args.adapter}: adapter was fine-tuned on {trained['dataset']}, not {dataset}")
    pick = {k: getattr(args, k) if getattr(args, k) is not None else trained.get(k, d)
            for k, d in (("angle", None), ("samples", 1024), ("seed", 0), ("eval_samples", None))}
    model, _ = load_backbone(dataset, args.checkpoint)
    method, record = load_adapter(args.adapter, model)
    task = make_task(dataset, data_dir=args.data_dir, **pick)
    acc = accuracy(method.logits(task.evaluate.images), task.evaluate.labels)
    out = {"method": record["method"], "numerics": record.get("numerics", "float"), "dataset": dataset,
           "angle": task.angle, "seed": pick["seed"], "eval_samples": len(task.evaluate), "accuracy": acc}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{record['method']} on {dataset} {task.angle:g}° (split seed {pick['seed']}, {len(task.evaluate)} "
              f"evaluation images): accuracy {acc:.4f}")
    return 0


def add_evaluate(sub: Sub) -> None:
    p = sub.add_parser("evaluate", parents=[common()], help="evaluate a backbone + adapter on the evaluation set")
    p.add_argument("--checkpoint", default=None, help="backbone (default: the bundled one)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--dataset", default=None, help="default: the adapter's")
    p.add_argument("--angle", type=float, default=None, help="default: the adapter's")
    p.add_argument("--samples", type=int, default=None, help="fine-tuning split held out (default: the adapter's)")
    p.add_argument("--eval-samples", type=int, default=None, help="default: the adapter's")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the adapter's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


# --- demo -------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from instantft.demo import demo

    demo(angle=args.angle, seed=args.seed, data_dir=args.data_dir)
    return 0


def add_demo(sub: Sub) -> None:
    p = sub.add_parser("demo", parents=[common()], help="every method on RotFMNIST 75° (the talk's table)")
    p.add_argument("--angle", type=float, default=75.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def add_reproduce(sub: Sub) -> None:
    from instantft.experiments.reproduce import add_reproduce as add

    add(sub)


def add_table1(sub: Sub) -> None:
    from instantft.analysis.table1 import add_table1 as add

    add(sub)


def add_bench(sub: Sub) -> None:
    from instantft.experiments.bench import add_bench as add

    add(sub)


PARSERS: list[Callable[[Sub], None]] = [
    add_pretrain,
    add_finetune,
    add_evaluate,
    add_demo,
    add_reproduce,
    add_table1,
    add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    from instantft import __version__

    parser = argparse.ArgumentParser(prog="instantft", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"instantft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
