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

from instantft.analysis.paper import PAPER_RANK
from instantft.errors import InstantFTError
from instantft.fixedpoint.formats import Numerics
from instantft.settings import Adapters, FineTuneConfig, Pretraining, Runtime, SettingsError, Source, Task, Training
from instantft.stream.config import ADAPT_EPOCHS, StreamSettings

__all__ = ["app", "flag", "main"]


# the settings models as flattened groups of flags: --rank, not --adapters.rank
TaskFlags = Annotated[Task, Parameter(name="*", group="Task")]
SourceFlags = Annotated[Source, Parameter(name="*", group="Backbone")]
TrainingFlags = Annotated[Training, Parameter(name="*", group="Training")]
AdapterFlags = Annotated[Adapters, Parameter(name="*", group="Adapters")]
ConfigFlags = Annotated[FineTuneConfig, Parameter(name="*", group="Training and adapters")]
NumericsFlags = Annotated[Numerics, Parameter(name="*", group="Numerics")]
RuntimeFlags = Annotated[Runtime, Parameter(name="*", group="Runtime")]
Json = Annotated[bool, Parameter(negative="", help="Print exactly one JSON object (no progress bar, no table).")]

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


def _inputs(*paths: Any, model: str | None = None) -> list[Any]:
    """A run's inputs, which an output may never replace or be written into: the files and
    folders named, the ``--model`` factory's source file (found without importing it) and the
    bundled checkpoints (read when no --checkpoint is given). Checked before the run; what the
    readers open is checked again when the output is written (:func:`instantft.fileio.run_scope`)."""
    from instantft.models.checkpoint import BUNDLED_WEIGHTS
    from instantft.usercode import module_source

    source = module_source(model) if model is not None else None
    return [p for p in (*paths, source) if p is not None] + sorted(BUNDLED_WEIGHTS.glob("*.safetensors"))


# --- pretrain ---------------------------------------------------------------------------------
@app.command
def pretrain(
    *,
    what: Annotated[Pretraining, Parameter(name="*", group="Backbone")],
    training: TrainingFlags = Training(),  # noqa: B008  (frozen: one default instance serves every call)
    out: Path | None = None,
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    json: Json = False,
) -> int:
    """Pre-train a backbone: the paper's LeNet-5 (§5.1), the MLP or the ResNet-8.

    Parameters
    ----------
    out
        Checkpoint file (default BACKBONE-DATASET.safetensors).
    """
    from instantft.data.files import existing_files
    from instantft.fileio import ensure_writable
    from instantft.pretrain import arch_of, pretrain_to_file
    from instantft.settings import PretrainConfig, check_steps

    config = PretrainConfig(**what.model_dump(exclude_unset=True), training=training)
    arch_of(config)  # a family with no network for the dataset: one line before any work
    check_steps(training.epochs, what.samples or 531_131, training.batch_size)  # no --samples: SVHN extra, the largest
    _apply(runtime)
    target = ensure_writable(out or f"{config.family}-{config.source}.safetensors",
                             existing_files(what.dataset.split("-")[0], runtime.data_dir))  # fmt: skip
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
    config: ConfigFlags = FineTuneConfig(),  # noqa: B008
    numerics: NumericsFlags = Numerics(),  # noqa: B008
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
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
    from instantft.run import prepare, provenance, run_for

    run = run_for(method, task, source, config, numerics.fixed())
    config = run.hyper
    inputs = _inputs(source.checkpoint, source.weights, task.data, model=source.model)
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

        saved = provenance(run, prepared.drift, prepared.meta.get("data_sha256"))
        extra: dict[str, Any] = {**saved, "numerics": record["numerics"]}
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
    rank: Annotated[int, Parameter(help="LoRA rank r (the paper's).")] = PAPER_RANK,
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
    training: Annotated[Training, Parameter(name="*", group="Training (each adaptation; --epochs 3 unless given)",
                                            show_default=False)] = Training(),  # noqa: B008
    adapters: AdapterFlags = Adapters(),  # noqa: B008
    runtime: RuntimeFlags = Runtime(),  # noqa: B008
    plot: Path | None = None,
    json: Json = False,
) -> int:
    """Prequential on-the-fly adaptation: test-then-train on a drifting stream with a bounded Forward Cache.

    Each adaptation is a short fit over what the memory holds: --epochs is 3 here unless given.

    Parameters
    ----------
    plot
        Write a plot of the windowed accuracy (PNG, PDF or SVG).
    """
    from instantft.stream.cli import run_command

    _apply(runtime)
    given = training.model_dump(exclude_unset=True)  # what was not given: the stream's own defaults
    adaptation = FineTuneConfig(**{"epochs": ADAPT_EPOCHS, **given}, **adapters.model_dump(exclude_unset=True))
    return run_command(settings, adaptation, runtime, plot, json)


# --- export -----------------------------------------------------------------------------------
@app.command
def export(
    *,
    method: Literal["skip2-lora", "instantft"],
    out: Path,
    task: TaskFlags = Task(),  # noqa: B008
    source: SourceFlags = Source(),  # noqa: B008
    config: ConfigFlags = FineTuneConfig(),  # noqa: B008
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
    from instantft.device import BUNDLE_FILE
    from instantft.device.export import export_bundle
    from instantft.fileio import ensure_writable
    from instantft.run import run_for

    ensure_writable(out / BUNDLE_FILE, _inputs(source.checkpoint, source.weights, task.data, model=source.model))
    _apply(runtime)
    summary = export_bundle(run_for(method, task, source, config), out, runtime)
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


# commands whose module is imported only when they run
app.command("instantft.reproduce:reproduce", name="reproduce", help_flags=[],
            help="Run a study of the source checkout: studies/STUDY.py [ARGS] (default fig7, the paper's figures).")
app.command("instantft.bench:bench", name="bench",
            help="Time the engines' fine-tunes against LoRA-All and the frozen forward, with CPU and wall time.")
# the fleet commands (Flower is an extra: imported only when one runs)
app.command("instantft.fleet.commands:app", name="fleet")


def _one_line(text: str) -> str:
    """``text`` on one line with every control character escaped (a class folder named with a
    terminal escape sequence is printed as ``\\x1b[...``, never sent to the terminal)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))


def error_line(message: str) -> str:
    """The one line a user error prints: every command's ``error: ...`` goes through here."""
    return f"error: {_one_line(message)}"


def _message(exc: BaseException) -> str:
    """One line for a user error; a settings field is named by its flag."""
    cause = exc.__cause__ if isinstance(exc, CycloptsError) else exc
    if isinstance(cause, SettingsError):
        return f"{flag(cause.field)} {cause.problem}".strip()
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Once the command is running, a ``SystemExit`` claiming success or carrying a
    message is not a way out: code calling ``sys.exit(0)`` or ``sys.exit("msg")`` mid-run (the
    user's, which :mod:`instantft.usercode` already guards, or anything else) ends the run with one
    ``error:`` line and status 2, never with success having written nothing."""
    from instantft.fileio import run_scope

    tokens = list(sys.argv[1:] if argv is None else argv)
    running = False
    try:
        if tokens in (["--version"], ["-V"]):
            from instantft import __version__

            print(f"instantft {__version__}")
            return 0
        with run_scope():  # what the command reads, no output of it may replace
            command, bound, _ = app.parse_args(tokens)
            running = True
            result = command(*bound.args, **bound.kwargs)
        return int(result) if isinstance(result, int) else 0
    except SystemExit as exc:
        if running and (exc.code is None or exc.code == 0 or not isinstance(exc.code, int)):  # "success" or a message
            from instantft.usercode import describe

            print(error_line(f"the run was ended by {describe(exc)}; nothing was written"), file=sys.stderr)
            return 2
        return exc.code if isinstance(exc.code, int) else 0  # --help; a failure's own status (a broken pipe: 1)
    except (InstantFTError, CycloptsError) as exc:
        print(error_line(_message(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
