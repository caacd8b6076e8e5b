"""One fine-tuning run end to end: task, backbone, method, fit, evaluate. The function the CLI,
the demo and ``reproduce`` all call."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from instantft.data import DriftTask, make_task
from instantft.errors import InstantFTError
from instantft.fixedpoint import FixedPointConfig
from instantft.methods import DivergedError, FineTuneConfig, FitResult, Method, create
from instantft.models import ARCH_FOR_DATASET, accuracy, arch_for, bundled_checkpoint, load_checkpoint

if TYPE_CHECKING:
    from instantft.config import RunConfig

DEFAULT_LR = {"rotmnist": 0.1, "rotfmnist": 0.1, "svhn": 0.025}


def base_dataset(dataset: str) -> str:
    return {"rotmnist": "mnist", "rotfmnist": "fmnist", "svhn": "svhn"}.get(dataset, dataset)


def load_backbone(
    dataset: str, checkpoint: str | os.PathLike[str] | None = None, family: str | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint given (of ``family`` if one is named), or the one of ``family`` (lenet5 by
    default, mlp, resnet8) bundled for the drift dataset's base dataset."""
    base = base_dataset(dataset)
    if base not in ARCH_FOR_DATASET:
        raise InstantFTError(f"unknown dataset {dataset!r}; valid: rotmnist, rotfmnist, svhn")
    arch = arch_for(family or "lenet5", base) if family is not None or checkpoint is None else None
    path = Path(checkpoint) if checkpoint is not None else bundled_checkpoint(base, family or "lenet5")
    return load_checkpoint(path, expect_arch=arch)


@dataclass
class RunResult:
    method: Method
    record: dict[str, Any]


@dataclass(frozen=True)
class RunOptions:
    """How a run is set up besides its hyper-parameters (:class:`FineTuneConfig`): the task's
    size and angle when :func:`finetune` builds the task, where files come from, the numerics,
    and what a sweep reuses or keeps."""

    angle: float | None = None
    samples: int = 1024
    eval_samples: int | None = None
    checkpoint: str | os.PathLike[str] | None = None
    data_dir: str | os.PathLike[str] | None = None
    threads: int | None = None
    # a sweep keeps a diverged run (NaN weights score what they score) instead of raising
    record_divergence: bool = False
    # the adapters are a no-op at init, so a caller running several methods on one task may pass
    # the base model's accuracy instead of re-evaluating it for each (tests check the no-op)
    accuracy_before: float | None = None
    numerics: str = "float"
    fixed: FixedPointConfig | None = None


def finetune(
    method: str,
    dataset: str = "rotmnist",
    *,
    config: FineTuneConfig | None = None,
    task: DriftTask | None = None,
    backbone: tuple[Any, dict[str, Any]] | None = None,
    options: RunOptions | None = None,
    **option_values: Any,
) -> RunResult:
    """Fine-tune ``method`` on a drift task and evaluate before and after.

    ``config``: the hyper-parameters (default: the paper's for ``dataset``); ``task`` and
    ``backbone`` (model, checkpoint metadata): built here when not given; ``options``: a
    :class:`RunOptions`, whose fields may also be passed by name, e.g.
    ``finetune("instantft", "rotmnist", angle=90)``. ``numerics="fixed"``: InstantFT in the
    FPGA core's integer arithmetic (:mod:`instantft.fixedpoint`, config ``fixed``)."""
    opts = replace(options or RunOptions(), **option_values)  # an unknown name is a TypeError, as in a call
    angle, samples, eval_samples, checkpoint = opts.angle, opts.samples, opts.eval_samples, opts.checkpoint
    data_dir, threads, numerics, fixed = opts.data_dir, opts.threads, opts.numerics, opts.fixed
    record_divergence, accuracy_before = opts.record_divergence, opts.accuracy_before
    config = config or FineTuneConfig(lr=DEFAULT_LR.get(dataset, 0.1))
    if threads is not None:
        torch.set_num_threads(threads)
    model, meta = backbone or load_backbone(dataset, checkpoint)
    task = task or make_task(
        dataset, angle=angle, samples=samples, seed=config.seed, eval_samples=eval_samples, data_dir=data_dir
    )
    if numerics == "float" and fixed is None:
        m = create(method, model, config)
    else:
        from instantft.methods.fixed_point import fixed_point_method

        m = fixed_point_method(method, model, config, fixed, numerics)
    ev = task.evaluate
    before = accuracy(m.logits(ev.images), ev.labels) if accuracy_before is None else accuracy_before
    diverged = None
    try:
        fit = m.fit(task.finetune)
    except DivergedError as exc:
        if not record_divergence:
            raise
        fit, diverged = FitResult(), str(exc)
    after = accuracy(m.logits(ev.images), ev.labels)
    record = {
        "method": method,
        "numerics": numerics,
        "dataset": dataset,
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
        "checkpoint": {k: meta.get(k) for k in ("architecture", "dataset", "seed", "test_accuracy", "weights_sha256")},
    }
    if numerics == "fixed":
        record["fixed_point"] = m.report()  # type: ignore[attr-defined]
    return RunResult(m, record)


def config_for(dataset: str, **overrides: Any) -> FineTuneConfig:
    """The default config for a dataset (its paper lr), with ``None`` overrides ignored."""
    base = FineTuneConfig(lr=DEFAULT_LR.get(dataset, 0.1))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


# --- the command line's glue: typed settings (instantft.config) -> one run ----------------------
def user_model(spec: str, weights: str | os.PathLike[str] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``package.module:factory`` called with no argument, then ``weights`` (a safetensors state
    dict) loaded into it; every failure is one line. The working directory is importable, as it
    is for ``python -m``."""
    import importlib
    import sys

    from torch import nn

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # anything the user's module raises on import
        raise InstantFTError(f"--model {spec}: cannot import {module_name} ({_one_line(exc)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InstantFTError(f"--model {spec}: {module_name} has no function {attr}")
    try:
        model = factory()
    except Exception as exc:
        raise InstantFTError(f"--model {spec}: {attr}() raised {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise InstantFTError(f"--model {spec}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    meta: dict[str, Any] = {"architecture": spec}
    if weights is not None:
        meta.update(load_weights(model, weights))
    return model, meta


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a safetensors state dict into ``model`` after checking names, shapes and values
    (no pickle: safetensors holds tensors only)."""
    import hashlib

    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InstantFTError(f"--weights {path}: no such file")
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
    model.load_state_dict(state)
    return {"weights": str(path), "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def prepare(run: RunConfig) -> tuple[tuple[Any, dict[str, Any]], DriftTask]:
    """The backbone (model or Backbone, metadata) and the task a :class:`RunConfig` names: a
    built-in task on a bundled or given LeNet-5, or the user's data on the user's model."""
    from instantft.config import check_adapter_memory, check_steps

    t, m = run.task, run.model
    if t.data is not None:
        from instantft.data.userdata import check_against_model, load_user_data, user_task

        loaded = load_user_data(t.data)
        if m.model is not None:
            model, meta = user_model(m.model, m.weights)
        elif m.checkpoint is not None:  # an in-tree network, e.g. a LeNet-5 from `instantft pretrain`
            model, meta = load_checkpoint(m.checkpoint)
        else:
            raise InstantFTError("--data needs --model (package.module:factory) or --checkpoint (an in-tree network)")
        check_against_model(loaded.data, model, str(t.data))
        task = user_task(loaded.data, samples=t.samples, seed=run.seed, eval_samples=t.eval_samples)
        meta["classes"] = loaded.classes
    else:
        assert t.dataset is not None
        model, meta = load_backbone(t.dataset, m.checkpoint, m.backbone)
        task = make_task(
            t.dataset, angle=t.angle, samples=t.samples if t.samples is not None else 1024, seed=run.seed,
            eval_samples=t.eval_samples, data_dir=run.runtime.data_dir,
        )
    config = fine_tune_config(run)
    check_steps(config.epochs, len(task.finetune), config.batch_size)
    from instantft.backbones import Backbone

    traced = Backbone(model, taps=m.tap_spec, example=task.finetune.images[:2])
    # the bundled LeNet-5 with its default taps goes in as it is (the methods' fast paths know it)
    backbone: Any = traced if m.model is not None or m.tap_spec != "auto" else model
    sizes, classes = traced.sizes, traced.num_classes
    cache = len(task.finetune) * 4 * sum(traced.cache_sizes)
    check_adapter_memory(config.rank, sizes, classes, cache)
    return (backbone, meta), task


def fine_tune_config(run: RunConfig) -> FineTuneConfig:
    """The command line's groups mapped onto the methods' :class:`FineTuneConfig`, with the
    dataset's paper learning rate unless ``--lr`` is given."""
    return config_for(run.task.dataset or "", seed=run.seed, **run.groups())


def run_config(run: RunConfig) -> RunResult:
    """One run from the command line's typed settings (see :mod:`instantft.config`)."""
    if run.runtime.threads is not None:
        torch.set_num_threads(run.runtime.threads)
    backbone, task = prepare(run)
    fixed = run.numerics.fixed()
    return finetune(
        run.method, run.dataset, config=fine_tune_config(run), task=task, backbone=backbone,
        numerics=run.numerics.numerics, fixed=fixed,
    )
