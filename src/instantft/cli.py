"""The ``instantft`` command line: every subcommand is a typed function registered on one
cyclopts :data:`app`, and its flags are the fields of the settings models of
:mod:`instantft.settings` (a field ``batch_size`` is ``--batch-size``; its docstring is the help,
its default and range are checked where the field is declared). A user error prints one line,
``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import json as jsonlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from instantft.errors import InstantFTError
from instantft.fixedpoint.formats import FixedPointConfig
from instantft.settings import Adapters, Runtime, SettingsError, Source, Task, Training
from instantft.stream.config import ADAPT_EPOCHS, StreamSettings

__all__ = ["app", "flag", "main"]


# the settings models as flattened groups of flags: --rank, not --adapters.rank
TaskFlags = Annotated[Task, Parameter(name="*", group="Task")]
SourceFlags = Annotated[Source, Parameter(name="*", group="Backbone")]
TrainingFlags = Annotated[Training, Parameter(name="*", group="Training")]
AdapterFlags = Annotated[Adapters, Parameter(name="*", group="Adapters")]
FixedFlags = Annotated[FixedPointConfig, Parameter(name="*", group="Fixed-point numerics (instantft only)")]
RuntimeFlags = Annotated[Runtime, Parameter(name="*", group="Runtime")]
Json = Annotated[bool, Parameter(negative="", help="Print exactly one JSON object (no progress bar, no table).")]
Numerics = Literal["float", "fixed"]

app = App(
    name="instantft",
    help="Fine-tune PyTorch classifiers with Skip-LoRA adapters and a Forward Cache (InstantFT / Skip2-LoRA).",
    exit_on_error=False,
    print_error=False,
    help_on_error=False,
    result_action="return_value",
)


def flag(field: str) -> str:
    """The command-line flag of a settings field (the one place fields become flags)."""
    return "--" + field.rsplit(".", 1)[-1].replace("_", "-") if field else ""


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


def _apply(runtime: Runtime) -> None:
    """Process-wide settings, applied once at the command's entry (never by the library)."""
    if runtime.threads is not None:
        import torch

        torch.set_num_threads(runtime.threads)


def _inputs(*paths: Any) -> list[Any]:
    """A run's input files, which an output may never replace: those named, and the bundled
    checkpoints (read when no --checkpoint is given)."""
    from instantft.models.checkpoint import BUNDLED_WEIGHTS

    return [p for p in paths if p is not None] + sorted(BUNDLED_WEIGHTS.glob("*.safetensors"))


def _fixed(numerics: Numerics, fixed: FixedPointConfig) -> FixedPointConfig | None:
    if numerics == "float":
        if fixed.model_fields_set:
            raise SettingsError("numerics", "float takes no fixed-point option (give --numerics fixed)")
        return None
    return fixed


# --- pretrain ---------------------------------------------------------------------------------
@app.command
def pretrain(
    *,
    dataset: Literal["mnist", "fmnist", "svhn"],
    samples: int | None = None,
    backbone: Literal["lenet5", "mlp", "resnet8"] = "lenet5",
    training: TrainingFlags = Training(),  # noqa: B008  (frozen: one default instance serves every call)
    out: Path | None = None,
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    json: Json = False,
) -> int:
    """Pre-train a backbone: the paper's LeNet-5 (§5.1), the MLP or the ResNet-8.

    Parameters
    ----------
    dataset
        Base dataset.
    samples
        First N training samples (default: all).
    backbone
        Architecture family: lenet5 (the paper's), mlp (3 layers) or resnet8 (BatchNorm, residual blocks).
    out
        Checkpoint file (default BACKBONE-DATASET.safetensors).
    """
    from instantft.data.files import existing_files
    from instantft.fileio import ensure_writable
    from instantft.pretrain import PretrainConfig, pretrain_to_file
    from instantft.settings import check_steps

    config = PretrainConfig(dataset=dataset, samples=samples, backbone=backbone, training=training)
    check_steps(training.epochs, samples or 531_131, training.batch_size)  # no --samples: SVHN extra, the largest
    _apply(runtime)
    target = ensure_writable(out or f"{backbone}-{dataset}.safetensors", existing_files(dataset, runtime.data_dir))
    meta = pretrain_to_file(config, target, data_dir=runtime.data_dir, show_progress=not json)
    if json:
        print_json({**meta, "out": str(target)})
    else:
        print(f"test accuracy {meta['test_accuracy']:.4f}; checkpoint written to {target}")
    return 0


# --- finetune ---------------------------------------------------------------------------------
@app.command
def finetune(
    *,
    method: str,
    task: TaskFlags = Task(),  # noqa: B008
    source: SourceFlags = Source(),  # noqa: B008
    training: TrainingFlags = Training(),  # noqa: B008
    adapters: AdapterFlags = Adapters(),  # noqa: B008
    numerics: Numerics = "float",
    fixed: FixedFlags = FixedPointConfig(),  # noqa: B008
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    save_adapter: Path | None = None,
    json: Json = False,
) -> int:
    """Fine-tune a backbone on drifted data (a built-in task) or on your own data and model.

    Parameters
    ----------
    method
        none, ft-all, ft-last, ft-bias, lora-all, lora-last, skip-lora, skip2-lora or instantft.
    numerics
        float, or fixed: InstantFT in the FPGA core's integer arithmetic.
    save_adapter
        Write the trained tensors here (.safetensors + JSON record).
    """
    from instantft.run import prepare, provenance, run_for

    run = run_for(method, task, source, training, adapters, _fixed(numerics, fixed))
    config = run.hyper
    inputs = _inputs(source.checkpoint, source.weights, task.data)
    if save_adapter is not None:
        from instantft.data.files import existing_files
        from instantft.fileio import ensure_writable
        from instantft.run import base_dataset

        found = existing_files(base_dataset(task.dataset), runtime.data_dir) if task.dataset else []
        ensure_writable(save_adapter, [*inputs, *found])
    _apply(runtime)
    from instantft.run import finetune as run_finetune

    prepared = prepare(task, source, config, runtime)
    result = run_finetune(run, runtime, prepared=prepared)
    record = result.record
    if save_adapter is not None:
        from instantft.methods.adapter_io import save_adapter as write_adapter

        extra: dict[str, Any] = {**provenance(run, prepared.drift), "numerics": record["numerics"]}
        if run.fixed is not None:
            extra["fixed"] = run.fixed.to_dict()
        write_adapter(save_adapter, result.method, extra, tuple(inputs))
        record["adapter"] = str(save_adapter)
    if json:
        print_json(record)
    else:
        from instantft.fixedpoint import describe
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
    task: TaskFlags = Task(),  # noqa: B008
    source: SourceFlags = Source(),  # noqa: B008
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    json: Json = False,
) -> int:
    """Evaluate a backbone + adapter on the evaluation set of the task it was fine-tuned on.

    The adapter file records its task (dataset or data file, angle, sizes) and seed; options
    given override the record, so it scores exactly the images held out when fine-tuning.

    Parameters
    ----------
    adapter
        Adapter file written by finetune --save-adapter.
    """
    from instantft.run import evaluate_adapter

    _apply(runtime)
    out = evaluate_adapter(adapter, task, source, runtime)
    if json:
        print_json(out)
    else:
        print(f"{out['method']} on {out['dataset']} {out['angle']:g}° (split seed {out['seed']}, "
              f"{out['eval_samples']} evaluation images): accuracy {out['accuracy']:.4f}")  # fmt: skip
    return 0


# --- demo -------------------------------------------------------------------------------------
@app.command
def demo(*, angle: float = 75.0, seed: int = 0, runtime: RuntimeFlags = Runtime()) -> int:  # noqa: B008
    """Every method on RotFMNIST 75° (the talk's table).

    Parameters
    ----------
    angle
        Rotation in degrees, -360..360.
    seed
        Split, batch order and adapter init seed.
    """
    from instantft.demo import demo as run_demo

    Task(angle=angle), Training(seed=seed)  # the same range checks as finetune's
    _apply(runtime)
    run_demo(angle=angle, seed=seed, data_dir=runtime.data_dir)
    return 0


# --- table1 -----------------------------------------------------------------------------------
@app.command
def table1(
    *,
    dataset: Literal["mnist", "svhn", "both"] = "both",
    rank: Annotated[int, Parameter(help="LoRA rank r (the paper's: 4).")] = 4,
    json: Json = False,
) -> int:
    """Parameters, FLOPs and memory per method, beside the paper's Table 1.

    Parameters
    ----------
    dataset
        Which network: the MNIST LeNet-5, the SVHN one, or both.
    """
    from instantft.analysis.table1 import print_table1, table1_rows

    Adapters(rank=rank)  # the same range as finetune's --rank
    rows = table1_rows(dataset, rank)
    if json:
        print(jsonlib.dumps(rows))
    else:
        print_table1(rows)
    return 0


# --- stream -----------------------------------------------------------------------------------
@app.command
def stream(
    *,
    settings: Annotated[StreamSettings, Parameter(name="*", group="Stream")] = StreamSettings(),  # noqa: B008
    training: TrainingFlags = Training(epochs=ADAPT_EPOCHS),  # noqa: B008
    adapters: AdapterFlags = Adapters(),  # noqa: B008
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    plot: Path | None = None,
    json: Json = False,
) -> int:
    """Prequential on-the-fly adaptation: test-then-train on a drifting stream with a bounded Forward Cache.

    Parameters
    ----------
    plot
        Write a plot of the windowed accuracy (PNG, PDF or SVG).
    """
    from instantft.settings import FineTuneConfig
    from instantft.stream.cli import run_command

    _apply(runtime)
    return run_command(settings, FineTuneConfig.of(training, adapters), runtime, plot, json)


# --- export -----------------------------------------------------------------------------------
@app.command
def export(
    *,
    method: Literal["skip2-lora", "instantft"],
    out: Path,
    task: TaskFlags = Task(),  # noqa: B008
    source: SourceFlags = Source(),  # noqa: B008
    training: TrainingFlags = Training(),  # noqa: B008
    adapters: AdapterFlags = Adapters(),  # noqa: B008
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    json: Json = False,
) -> int:
    """Write a bundle for instantft-device: the task, backbone and initial adapters `finetune` would use.

    Parameters
    ----------
    method
        The cached method the device runs.
    out
        Bundle directory (created; bundle.safetensors + manifest.json).
    """
    from instantft.device.export import export_bundle
    from instantft.run import run_for

    _apply(runtime)
    summary = export_bundle(run_for(method, task, source, training, adapters), out, runtime)
    if json:
        print_json(summary)
    else:
        note = "" if summary["pixels_lossless"] else " (rotated pixels rounded to uint8: see manifest.json 'pixels')"
        print(
            f"bundle written to {summary['out']}: {summary['method']} on {summary['dataset']} {summary['angle']:g}°, "
            f"{summary['samples']} + {summary['eval_samples']} images, {summary['steps']} steps, "
            f"{summary['bundle_bytes']} bytes{note}; run: instantft-device {summary['out']}"
        )
    return 0


# the fleet commands (Flower is an extra: imported only when one runs)
app.command("instantft.fleet.commands:app", name="fleet")


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))


def _message(exc: BaseException) -> str:
    """One line for a user error; a settings field is named by its flag."""
    cause = exc.__cause__ if isinstance(exc, CycloptsError) else exc
    if isinstance(cause, SettingsError):
        return f"{flag(cause.field)} {cause.problem}".strip()
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        if tokens in (["--version"], ["-V"]):
            from instantft import __version__

            print(f"instantft {__version__}")
            return 0
        result = app(tokens)
        return int(result) if isinstance(result, int) else 0
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (InstantFTError, CycloptsError) as exc:
        print(f"error: {_one_line(_message(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
