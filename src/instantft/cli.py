"""The ``instantft`` command line, derived from the typed settings in :mod:`instantft.config`.

Each subcommand is a typed function; cyclopts turns its parameters into flags, and the config
dataclasses into flattened groups of flags whose help is each field's docstring (one place for
a flag, its type, its help and its range check). User errors (:class:`InstantFTError`, a bad
flag or value) print one line, ``error: ...``, and exit with status 2.

Subcommands living elsewhere (reproduce, table1, bench, ...) register through :data:`PARSERS`:
an ``add_X(sub)`` function adding an argparse parser with ``sub.add_parser(...)`` and
``set_defaults(func=...)``. They are parsed by :class:`Parser`, argparse with the same one-line
errors and with negative numbers such as ``-1e-3`` read as values.
"""

from __future__ import annotations

import argparse
import json as jsonlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from instantft.config import (
    AdapterConfig,
    CacheConfig,
    LoopConfig,
    ModelConfig,
    NumericsConfig,
    Parser,
    RunConfig,
    RuntimeConfig,
    TaskConfig,
    TrainingConfig,
    UsageError,
    check_int,
    common,
    one_line,
)
from instantft.errors import InstantFTError

__all__ = ["PARSERS", "Parser", "app", "common", "main"]

Sub = Any  # argparse's private _SubParsersAction

# the config groups, flattened: --rank, not --adapter.rank
Task = Annotated[TaskConfig, Parameter(name="*")]
Model = Annotated[ModelConfig, Parameter(name="*")]
Training = Annotated[TrainingConfig, Parameter(name="*")]
Loop = Annotated[LoopConfig, Parameter(name="*")]
Adapter = Annotated[AdapterConfig, Parameter(name="*")]
Cache = Annotated[CacheConfig, Parameter(name="*")]
FIXED_GROUP = "Fixed-point numerics (the FPGA datapath, instantft only)"
Numerics = Annotated[NumericsConfig, Parameter(name="*", group=FIXED_GROUP)]
Runtime = Annotated[RuntimeConfig, Parameter(name="*")]
Json = Annotated[bool, Parameter(negative="", help="Print exactly one JSON object (no progress bar, no table).")]
# frozen, so one default instance serves every call
NO_TASK = TaskConfig()
NO_MODEL = ModelConfig()
NO_TRAINING = TrainingConfig()
NO_LOOP = LoopConfig()
NO_ADAPTER = AdapterConfig()
NO_CACHE = CacheConfig()
NO_NUMERICS = NumericsConfig()
NO_RUNTIME = RuntimeConfig()


app = App(
    name="instantft",
    help="Fine-tune PyTorch classifiers with Skip-LoRA adapters and a Forward Cache (InstantFT / Skip2-LoRA).",
    exit_on_error=False,
    print_error=False,
    help_on_error=False,
    result_action="return_value",
)


def _finite(value: Any) -> Any:
    """JSON has no NaN or inf: a non-finite number is printed as null, never as a bare NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_json(record: Any) -> None:
    print(jsonlib.dumps(_finite(record), allow_nan=False))


def _inputs(*paths: Any) -> list[Any]:
    """A run's input files, which an output may never replace: those named, and the bundled
    checkpoints (read when no --checkpoint is given)."""
    from instantft.models.checkpoint import BUNDLED_WEIGHTS

    return [p for p in paths if p is not None] + sorted(BUNDLED_WEIGHTS.glob("*.safetensors"))


# --- pretrain ---------------------------------------------------------------------------------
@app.command
def pretrain(
    *,
    dataset: Literal["mnist", "fmnist", "svhn"],
    samples: int | None = None,
    seed: int = 0,
    backbone: Literal["lenet5", "mlp", "resnet8"] = "lenet5",
    training: Training = NO_TRAINING,
    out: Path | None = None,
    runtime: Runtime = NO_RUNTIME,
    json: Json = False,
) -> int:
    """Pre-train a backbone: the paper's LeNet-5 (§5.1), the MLP or the ResNet-8.

    Parameters
    ----------
    dataset
        Base dataset.
    samples
        First N training samples (default: all).
    seed
        Weight init and batch order seed, 0 <= seed < 2**63.
    backbone
        Architecture family: lenet5 (the paper's), mlp (3 layers) or resnet8 (BatchNorm, residual blocks).
    out
        Checkpoint file (default BACKBONE-DATASET.safetensors).
    """
    from instantft.config import SEED_LIMIT, check_steps
    from instantft.data.files import existing_files
    from instantft.fileio import ensure_writable
    from instantft.pretrain import PretrainConfig, pretrain_to_file

    check_int("--seed", seed, 0, SEED_LIMIT - 1, "seeds are 63-bit")
    check_int("--samples", samples, 1, 2**31 - 1)
    epochs, batch = training.epochs or 10, training.batch_size or 20
    check_steps(epochs, samples or 531_131, batch)  # no --samples: bounded by the largest split, SVHN extra
    _threads(runtime)
    config = PretrainConfig(dataset, samples, epochs, batch, training.lr, seed, backbone)
    target = ensure_writable(out or f"{backbone}-{dataset}.safetensors", existing_files(dataset, runtime.data_dir))
    meta = pretrain_to_file(config, target, data_dir=runtime.data_dir, show_progress=not json)
    if json:
        print_json({**meta, "out": str(target)})
    else:
        print(f"test accuracy {meta['test_accuracy']:.4f}; checkpoint written to {target}")
    return 0


def _threads(runtime: RuntimeConfig) -> None:
    if runtime.threads is not None:
        import torch

        torch.set_num_threads(runtime.threads)


# --- finetune ---------------------------------------------------------------------------------
@app.command
def finetune(
    *,
    method: str,
    task: Task = NO_TASK,
    model: Model = NO_MODEL,
    training: Training = NO_TRAINING,
    loop: Loop = NO_LOOP,
    adapter: Adapter = NO_ADAPTER,
    cache: Cache = NO_CACHE,
    numerics: Numerics = NO_NUMERICS,
    runtime: Runtime = NO_RUNTIME,
    save_adapter: Path | None = None,
    json: Json = False,
) -> int:
    """Fine-tune a backbone on drifted data (a built-in task) or on your own data and model.

    Parameters
    ----------
    method
        none, ft-all, ft-last, ft-bias, lora-all, lora-last, skip-lora, skip2-lora or instantft.
    save_adapter
        Write the trained tensors here (.safetensors + JSON record).
    """
    from instantft.methods import method_names

    if method not in method_names():
        raise InstantFTError(f"unknown method {method!r}; valid: {', '.join(method_names())}")
    run = RunConfig(method, task, model, training, loop, adapter, cache, numerics, runtime)
    fixed = numerics.fixed()  # option errors before any data is read
    if save_adapter is not None:
        from instantft.data.files import existing_files
        from instantft.fileio import ensure_writable
        from instantft.run import base_dataset

        found = existing_files(base_dataset(task.dataset), runtime.data_dir) if task.dataset else []
        ensure_writable(save_adapter, _inputs(model.checkpoint, model.weights, task.data, *found))
    from instantft.fixedpoint import describe
    from instantft.methods.adapter_io import save_adapter as write_adapter
    from instantft.run import run_config

    result = run_config(run)
    record = result.record
    if save_adapter is not None:
        picked = {k: record[k] for k in ("dataset", "angle", "seed", "samples")}
        source = {"data": str(task.data), "model": model.model, "taps": model.taps} if task.data else {}
        extra: dict[str, Any] = {"task": {**picked, "eval_samples": task.eval_samples, **source},
                                 "numerics": numerics.numerics}
        if fixed is not None:
            extra["fixed"] = fixed.to_dict()
        write_adapter(save_adapter, result.method, extra, tuple(_inputs(model.checkpoint, model.weights, task.data)))
        record["adapter"] = str(save_adapter)
    if json:
        print_json(record)
    else:
        from instantft.tables import print_runs

        angle = f" {record['angle']:g}°" if task.dataset else ""
        print_runs([record], title=f"{record['dataset']}{angle}, seed {record['seed']}")
        print(describe(record))
    return 0


# --- evaluate ---------------------------------------------------------------------------------
@app.command
def evaluate(
    *,
    adapter: Path,
    task: Task = NO_TASK,
    model: Model = NO_MODEL,
    runtime: Runtime = NO_RUNTIME,
    json: Json = False,
) -> int:
    """Evaluate a backbone + adapter on the evaluation set of the task it was fine-tuned on.

    The adapter file records the dataset (or data file), angle, split seed and sizes; options
    given override the record, so it scores exactly the images held out when fine-tuning.

    Parameters
    ----------
    adapter
        Adapter file written by finetune --save-adapter.
    """
    from instantft.methods.adapter_io import load_adapter, read_adapter_record
    from instantft.models import accuracy
    from instantft.run import prepare

    adapter_record = read_adapter_record(adapter)
    trained = adapter_record.get("task", {})
    family = str(adapter_record.get("architecture") or "").split("-")[0]
    if model == NO_MODEL and family in ("mlp", "resnet8"):  # a bundled non-LeNet backbone: the record says which
        model = replace(model, backbone=family)
    if not isinstance(trained, dict):
        raise InstantFTError(f"{adapter}: adapter metadata is malformed (task is not an object)")
    data = task.data if task.data is not None else (Path(trained["data"]) if trained.get("data") else None)
    dataset = None if data is not None else (task.dataset or trained.get("dataset"))
    if dataset is None and data is None:
        raise InstantFTError(f"{adapter}: adapter records no dataset; pass --dataset")
    if dataset is not None and trained.get("dataset") not in (None, dataset):
        raise InstantFTError(f"{adapter}: adapter was fine-tuned on {trained['dataset']}, not {dataset}")

    def pick(name: str, default: Any) -> Any:
        given = getattr(task, name)
        return given if given is not None else trained.get(name, default)

    picked = TaskConfig(
        dataset=dataset, data=data, angle=pick("angle", None) if data is None else None,
        samples=pick("samples", None if data is not None else 1024), eval_samples=pick("eval_samples", None),
        seed=pick("seed", 0),
    )
    if data is not None and model.model is None:
        # a model named in a file is never imported: that would run whatever code the file names
        named = f" ({trained['model']})" if isinstance(trained.get("model"), str) else ""
        raise InstantFTError(f"{adapter}: adapter was fine-tuned on your own model{named}; pass --model, --weights")
    if data is not None and model.taps == "auto" and isinstance(trained.get("taps"), str):
        model = replace(model, taps=trained["taps"])
    (backbone, _), drift = prepare(RunConfig("none", picked, model, runtime=runtime))
    # the plain module: load_adapter rebuilds the method with the taps its record names
    method, record = load_adapter(adapter, getattr(backbone, "model", backbone))
    acc = accuracy(method.logits(drift.evaluate.images), drift.evaluate.labels)
    name = dataset or drift.dataset
    out = {"method": record["method"], "numerics": record.get("numerics", "float"), "dataset": name,
           "angle": drift.angle, "seed": picked.seed, "eval_samples": len(drift.evaluate), "accuracy": acc}
    if json:
        print_json(out)
    else:
        print(f"{record['method']} on {name} {drift.angle:g}° (split seed {picked.seed}, {len(drift.evaluate)} "
              f"evaluation images): accuracy {acc:.4f}")
    return 0


# --- demo -------------------------------------------------------------------------------------
@app.command
def demo(*, angle: float = 75.0, seed: int = 0, runtime: Runtime = NO_RUNTIME) -> int:
    """Every method on RotFMNIST 75° (the talk's table).

    Parameters
    ----------
    angle
        Rotation in degrees, -360..360.
    seed
        Split, batch order and adapter init seed.
    """
    from instantft.demo import demo as run_demo

    TaskConfig(angle=angle, seed=seed)  # the same range checks as finetune's
    _threads(runtime)
    run_demo(angle=angle, seed=seed, data_dir=runtime.data_dir)
    return 0


# --- subcommands registered from other modules (argparse) ---------------------------------------
def add_reproduce(sub: Sub) -> None:
    from instantft.reproduce import add_reproduce as add

    add(sub)


def add_table1(sub: Sub) -> None:
    from instantft.analysis.table1 import add_table1 as add

    add(sub)


def add_bench(sub: Sub) -> None:
    from instantft.bench import add_bench as add

    add(sub)


def add_stream(sub: Sub) -> None:
    from instantft.stream.cli import add_stream as add

    add(sub)


def add_export(sub: Sub) -> None:
    from instantft.device.export import add_export as add

    add(sub)


PARSERS: list[Callable[[Sub], None]] = [
    add_reproduce,
    add_table1,
    add_bench,
    add_stream,
    add_export,
]


def argparse_commands() -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """name -> (parser, one-line help) of every subcommand registered through :data:`PARSERS`."""
    root = Parser(prog="instantft", add_help=False)
    sub = root.add_subparsers(dest="command", parser_class=Parser)
    for add in PARSERS:
        add(sub)
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return {name: (parser, helps.get(name, "")) for name, parser in sub.choices.items()}


def _register_argparse(commands: dict[str, tuple[argparse.ArgumentParser, str]]) -> None:
    """List the argparse subcommands in ``instantft --help`` (main() runs them itself)."""
    for name, (parser, help_text) in commands.items():
        if name in app:
            continue

        def forward(*tokens: Annotated[str, Parameter(allow_leading_hyphen=True)], _p: Any = parser) -> int:
            args = _p.parse_args(list(tokens))
            return int(args.func(args))

        app.command(forward, name=name, help=help_text)


TYPED = ("pretrain", "finetune", "evaluate", "demo")  # the commands defined above


def main(argv: Sequence[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            if tokens and tokens[0] in TYPED:  # the argparse modules are not even imported
                result = app(tokens)
                return int(result) if isinstance(result, int) else 0
            commands = argparse_commands()
            _register_argparse(commands)
            if tokens and tokens[0] in commands:
                args = commands[tokens[0]][0].parse_args(tokens[1:])
                return int(args.func(args))
            if tokens in (["--version"], ["-V"]):
                from instantft import __version__

                print(f"instantft {__version__}")
                return 0
            result = app(tokens)
            return int(result) if isinstance(result, int) else 0
        except CycloptsError as exc:
            raise UsageError(one_line(str(exc))) from None
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except InstantFTError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
