"""One fine-tuning run end to end: task, backbone, method, fit, evaluate. The function the CLI,
the demo and ``reproduce`` all call."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from instantft.data import DriftTask, make_task
from instantft.errors import InstantFTError
from instantft.fixedpoint import FixedPointConfig
from instantft.methods import DivergedError, FineTuneConfig, FitResult, Method, create
from instantft.models import ARCH_FOR_DATASET, LeNet5, accuracy, bundled_checkpoint, load_checkpoint

DEFAULT_LR = {"rotmnist": 0.1, "rotfmnist": 0.1, "svhn": 0.025}


def base_dataset(dataset: str) -> str:
    return {"rotmnist": "mnist", "rotfmnist": "fmnist", "svhn": "svhn"}.get(dataset, dataset)


def load_backbone(dataset: str, checkpoint: str | os.PathLike[str] | None = None) -> tuple[LeNet5, dict[str, Any]]:
    """The checkpoint given, or the one bundled for the drift dataset's base dataset."""
    base = base_dataset(dataset)
    if base not in ARCH_FOR_DATASET:
        raise InstantFTError(f"unknown dataset {dataset!r}; valid: rotmnist, rotfmnist, svhn")
    path = Path(checkpoint) if checkpoint is not None else bundled_checkpoint(base)
    return load_checkpoint(path, expect_arch=ARCH_FOR_DATASET[base])


@dataclass
class RunResult:
    method: Method
    record: dict[str, Any]


def finetune(
    method: str,
    dataset: str = "rotmnist",
    *,
    angle: float | None = None,
    samples: int = 1024,
    config: FineTuneConfig | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    backbone: tuple[LeNet5, dict[str, Any]] | None = None,
    task: DriftTask | None = None,
    eval_samples: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    record_divergence: bool = False,
    accuracy_before: float | None = None,
    numerics: str = "float",
    fixed: FixedPointConfig | None = None,
) -> RunResult:
    """Fine-tune ``method`` on a drift task and evaluate before and after. ``numerics="fixed"``:
    InstantFT in the FPGA core's integer arithmetic (:mod:`instantft.fixedpoint`, config ``fixed``)."""
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
        from instantft.fixedpoint.trainer import fixed_point_method

        m = fixed_point_method(method, model, config, fixed, numerics)
    ev = task.evaluate
    # the adapters are a no-op at init, so a caller running several methods on one task may pass
    # the base model's accuracy instead of re-evaluating it for each (tests check the no-op)
    before = accuracy(m.logits(ev.images), ev.labels) if accuracy_before is None else accuracy_before
    diverged = None
    try:
        fit = m.fit(task.finetune)
    except DivergedError as exc:
        if not record_divergence:
            raise
        fit, diverged = FitResult(), str(exc)  # a sweep keeps the run: NaN weights score what they score
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
