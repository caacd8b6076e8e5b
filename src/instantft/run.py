"""One fine-tuning run end to end: task, backbone, method, fit, evaluate. The function the CLI,
the demo and the studies all call."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instantft.data import DriftTask, make_task
from instantft.errors import InstantFTError
from instantft.fixedpoint import FixedPointConfig
from instantft.machine import torch_threads
from instantft.methods import DivergedError, FitResult, Method, create
from instantft.models import ARCH_FOR_DATASET, accuracy, arch_for, bundled_checkpoint, load_checkpoint
from instantft.settings import (
    DATASET_LR,
    FineTuneConfig,
    Runtime,
    Settings,
    SettingsError,
    Source,
    Task,
    Training,
    check_adapter_memory,
    check_steps,
    training_for,
)


def base_dataset(dataset: str) -> str:
    """The dataset a task's backbone is pre-trained on (a fan task: its source, e.g. fan-silentA)."""
    from instantft.data.fan import is_fan, source_of

    if is_fan(dataset):
        return source_of(dataset)
    return {"rotmnist": "mnist", "rotfmnist": "fmnist", "svhn": "svhn"}.get(dataset, dataset)


def load_backbone(
    dataset: str, checkpoint: str | os.PathLike[str] | None = None, family: str | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint given (of ``family`` if one is named), or the one of ``family`` (lenet5 by
    default, mlp, resnet8) bundled for the drift dataset's base dataset."""
    base = base_dataset(dataset)
    default = "mlp" if base.startswith("fan") else "lenet5"  # the fan tasks' backbone is an MLP
    if base not in ARCH_FOR_DATASET and default == "lenet5":
        raise InstantFTError(f"unknown dataset {dataset!r}; valid: rotmnist, rotfmnist, svhn, fan (fan-*)")
    arch = arch_for(family or default, base) if family is not None or checkpoint is None else None
    path = Path(checkpoint) if checkpoint is not None else bundled_checkpoint(base, family or default)
    return load_checkpoint(path, expect_arch=arch)


@dataclass
class RunResult:
    method: Method
    record: dict[str, Any]


def config_for(dataset: str | None, **overrides: Any) -> FineTuneConfig:
    """The default config for a task (its paper learning rate), with ``None`` overrides ignored."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return FineTuneConfig(**{"lr": DATASET_LR.get(base_dataset(dataset or ""), Training().lr), **given})


class Run(Settings):
    """One fine-tuning run: the method and every setting its result depends on."""

    method: str
    """none, ft-all, ft-last, ft-bias, lora-all, lora-last, skip-lora, skip2-lora or instantft."""
    task: Task = Task(dataset="rotmnist")
    source: Source = Source()
    config: FineTuneConfig | None = None
    """The hyper-parameters (default: the task's, :func:`config_for`)."""
    fixed: FixedPointConfig | None = None
    """InstantFT in the FPGA core's integer arithmetic (:mod:`instantft.fixedpoint`) instead of float."""

    @property
    def hyper(self) -> FineTuneConfig:
        return self.config if self.config is not None else config_for(self.task.dataset)


def run_for(method: str, task: Task, source: Source, config: FineTuneConfig, fixed: FixedPointConfig | None = None
            ) -> Run:  # fmt: skip
    """The run the command line's settings name, checked before any data is read; the task's own
    learning rate applies unless one was given."""
    from instantft.methods import method_names

    if method not in method_names():
        raise SettingsError("method", f"{method!r} is unknown; valid: {', '.join(method_names())}")
    if task.dataset is None and task.data is None:
        raise SettingsError("dataset", "or --data is needed: a built-in task (rotmnist, rotfmnist, svhn) or your files")
    if source.model is not None and task.data is None:
        raise SettingsError("model", "needs --data: the built-in tasks run on the bundled backbones (--backbone)")
    config = training_for(base_dataset(task.dataset or ""), config)
    check_steps(config.epochs, task.finetune_samples(), config.batch_size)
    return Run(method=method, task=task, source=source, config=config, fixed=fixed)


def provenance(run: Run, drift: DriftTask, data_sha256: str | None = None) -> dict[str, Any]:
    """What an adapter record says it was trained on: the task (with the sample count actually
    used, and the user's data by absolute path), the content hash of that data
    (:attr:`~instantft.data.userdata.UserData.sha256`, from :attr:`Prepared.meta`) and the
    backbone's source, so ``evaluate`` re-creates the same split on the same images."""
    changes: dict[str, Any] = {"samples": len(drift.finetune)}
    if run.task.data is not None:
        changes["data"] = run.task.data.resolve()
    out: dict[str, Any] = {"task": run.task.replace(**changes).to_dict(), "source": run.source.to_dict()}
    if data_sha256:
        out["data_sha256"] = data_sha256
    return out


@dataclass(frozen=True)
class Prepared:
    """A run's inputs, built once: the backbone (a model or a traced Backbone), its metadata and
    the split task. A caller running several methods on one task passes it to each, with the base
    model's accuracy (the adapters start as a no-op, so it is every method's starting point)."""

    backbone: Any
    meta: dict[str, Any]
    drift: DriftTask
    accuracy_before: float | None = None


def finetune(
    run: Run, runtime: Runtime | None = None, *, prepared: Prepared | None = None, record_divergence: bool = False
) -> RunResult:
    """Fine-tune ``run.method`` on its task and evaluate before and after. ``record_divergence``:
    a sweep keeps a diverged run (NaN weights score what they score) instead of raising."""
    runtime = runtime or Runtime()
    config = run.hyper
    prepared = prepared or prepare(run.task, run.source, config, runtime)
    task = prepared.drift
    check_steps(config.epochs, len(task.finetune), config.batch_size)
    m = create(run.method, prepared.backbone, config, runtime=runtime, fixed=run.fixed)
    ev = task.evaluate
    with torch_threads(runtime.threads):
        before = prepared.accuracy_before
        before = accuracy(m.logits(ev.images), ev.labels) if before is None else before
        diverged = None
        try:
            fit = m.fit(task.finetune)
        except DivergedError as exc:
            if not record_divergence:
                raise
            fit, diverged = FitResult(), str(exc)
        after = accuracy(m.logits(ev.images), ev.labels)
    record = {
        "method": run.method,
        "numerics": "float" if run.fixed is None else "fixed",
        "dataset": run.task.name,
        "angle": task.angle,
        "seed": config.seed,
        "rank": config.rank,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "samples": len(task.finetune),
        "eval_samples": len(ev),
        "trainable_params": m.trainable_parameters(),
        "accuracy_before": before,
        "accuracy_after": after,
        "finetune_seconds": fit.seconds,
        "steps": fit.steps,
        "cache_bytes": fit.cache_bytes,
        "epoch_losses": fit.epoch_losses,
        "diverged": diverged,
        "config": config.to_dict(),
        "checkpoint": {k: prepared.meta.get(k) for k in ("architecture", "dataset", "seed", "test_accuracy",
                                                          "weights_sha256")},
    }
    if run.fixed is not None:
        record["fixed_point"] = m.report()
    return RunResult(m, record)


# --- the backbone and the task a run names ----------------------------------------------------
def user_model(spec: str, weights: str | os.PathLike[str] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``package.module:factory`` called with no argument, then ``weights`` (a safetensors state
    dict) loaded into it; every failure is one line. The working directory is importable, as it
    is for ``python -m``."""
    import importlib
    import sys

    from torch import nn

    from instantft.fileio import declare_input
    from instantft.usercode import guard_model, user_code

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    with user_code(f"--model {spec}: importing {module_name}"):
        module = importlib.import_module(module_name)
    declare_input(getattr(module, "__file__", None))
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InstantFTError(f"--model {spec}: {module_name} has no function {attr}")
    with user_code(f"--model {spec}: {attr}()"):
        model = factory()
    if not isinstance(model, nn.Module):
        raise InstantFTError(f"--model {spec}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    guard_model(model, f"--model {spec}")
    meta: dict[str, Any] = {"architecture": spec}
    if weights is not None:
        meta.update(load_weights(model, weights))
    return model, meta


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a safetensors state dict into ``model`` after checking names, shapes and values
    (no pickle: safetensors holds tensors only)."""
    from safetensors.torch import load_file

    from instantft.fileio import check_regular, sha256_file

    path = Path(path)
    check_regular(path, "--weights file")
    try:
        state = load_file(path)
    except Exception as exc:
        raise InstantFTError(f"--weights {path}: not a readable .safetensors file ({_one_line(exc)})") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        parts = [f"missing {', '.join(missing[:5])}" if missing else "", f"unexpected {', '.join(unexpected[:5])}"
                 if unexpected else ""]
        raise InstantFTError(f"--weights {path}: tensors do not match the model ({'; '.join(p for p in parts if p)})")
    for name, t in state.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise InstantFTError(
                f"--weights {path}: {name} has shape {tuple(t.shape)}, the model's is {tuple(own[name].shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InstantFTError(f"--weights {path}: {name} holds NaN or infinite values")
    from instantft.usercode import user_code

    with user_code(f"--weights {path}: loading into the model"):  # a module may override its loading
        model.load_state_dict(state)
    return {"weights": str(path), "weights_sha256": sha256_file(path)}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def prepare(task: Task, source: Source, config: FineTuneConfig, runtime: Runtime | None = None) -> Prepared:
    """The backbone and the split task that ``task`` and ``source`` name: a built-in task on a
    bundled or given network, or the user's data on the user's model; sizes checked against the
    memory budget before anything is trained."""
    data_dir = runtime.data_dir if runtime is not None else None
    if task.data is not None:
        from instantft.data.userdata import check_against_model, load_user_data, user_task

        loaded = load_user_data(task.data)
        if source.model is not None:
            model, meta = user_model(source.model, source.weights)
        elif source.checkpoint is not None:  # an in-tree network, e.g. a LeNet-5 from `instantft pretrain`
            model, meta = load_checkpoint(source.checkpoint)
        else:
            raise InstantFTError("--data needs --model (package.module:factory) or --checkpoint (an in-tree network)")
        check_against_model(loaded.data, model, str(task.data))
        drift = user_task(loaded.data, samples=task.samples, seed=config.seed, eval_samples=task.eval_samples)
        meta["classes"], meta["data_sha256"] = loaded.classes, loaded.sha256
    else:
        if task.dataset is None:
            raise InstantFTError("give --dataset (rotmnist, rotfmnist, svhn) or --data (an image folder or .npz file)")
        model, meta = load_backbone(task.dataset, source.checkpoint, source.backbone)
        samples = task.samples if task.dataset.startswith("fan") else task.finetune_samples()  # fan: all of take 1
        drift = make_task(task.dataset, angle=task.angle, samples=samples, seed=config.seed,
                          eval_samples=task.eval_samples, data_dir=data_dir)  # fmt: skip
    check_steps(config.epochs, len(drift.finetune), config.batch_size)
    from instantft.backbones import Backbone

    traced = Backbone(model, taps=source.tap_spec, example=drift.finetune.images[:2])
    # the bundled LeNet-5 with its default taps goes in as it is (the methods' fast paths know it)
    backbone: Any = traced if source.model is not None or source.tap_spec != "auto" else model
    cache = len(drift.finetune) * 4 * sum(traced.cache_sizes)
    check_adapter_memory(config.rank, traced.sizes, traced.num_classes, cache)
    return Prepared(backbone, meta, drift)


def evaluate_adapter(path: Path, task: Task, source: Source, runtime: Runtime | None = None) -> dict[str, Any]:
    """Score an adapter file on the evaluation images of the task it records (``task`` and
    ``source`` fields given explicitly override the record's)."""
    from instantft.methods.adapter_io import load_adapter, read_adapter_record
    from instantft.records import saved_task

    record = read_adapter_record(path)
    saved = Task.load(saved_task(record.get("task") or {}), f"{path}: adapter task")
    given, base = task.model_dump(exclude_unset=True), saved.model_dump(exclude_unset=True)
    for field, other in (("data", "dataset"), ("dataset", "data")):
        if field in given:  # one source replaces the other
            base.pop(other, None)
    task = Task(**{**base, **given})
    if "data" not in given and task.data is not None and not task.data.is_absolute():
        raise InstantFTError(
            f"{path}: adapter records the relative data path {task.data} (from an older version), which names other "
            "files from another directory; pass --data with the files it was fine-tuned on"
        )
    if task.dataset is None and task.data is None:
        raise InstantFTError(f"{path}: adapter records no dataset; pass --dataset")
    if saved.dataset is not None and task.dataset not in (None, saved.dataset):
        raise InstantFTError(f"{path}: adapter was fine-tuned on {saved.dataset}, not {task.dataset}")
    recorded = record.get("source") or {}
    if task.data is not None and source.model is None:
        # a model named in a file is never imported: that would run whatever code the file names
        named = f" ({recorded['model']})" if isinstance(recorded.get("model"), str) else ""
        raise InstantFTError(f"{path}: adapter was fine-tuned on your own model{named}; pass --model, --weights")
    family = str(record.get("architecture") or "").split("-")[0]
    if not source.model_fields_set and family in ("mlp", "resnet8"):  # a bundled non-LeNet backbone
        source = Source(backbone=family)
    if task.data is not None and "taps" not in source.model_fields_set and isinstance(recorded.get("taps"), str):
        source = source.replace(taps=recorded["taps"])
    config = FineTuneConfig.load_record(record["config"], f"{path}: adapter config")
    prepared = prepare(task, source, config, runtime)
    pinned, found = record.get("data_sha256"), prepared.meta.get("data_sha256")
    if task.data is not None and pinned is not None and found != pinned:
        raise InstantFTError(
            f"{task.data}: is not the data {path} was fine-tuned on (its content hash differs from the recorded one: "
            "files changed, added or removed); evaluating would score other images"
        )
    model = getattr(prepared.backbone, "model", prepared.backbone)
    method, _ = load_adapter(path, model)  # rebuilt with the taps its record names
    drift = prepared.drift
    return {"method": record["method"], "numerics": record.get("numerics", "float"), "dataset": task.name,
            "angle": drift.angle, "seed": config.seed, "eval_samples": len(drift.evaluate),
            "accuracy": accuracy(method.logits(drift.evaluate.images), drift.evaluate.labels)}  # fmt: skip
