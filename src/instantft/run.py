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
from instantft.methods import FineTuneConfig, Method, create
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
    angle: float = 90.0,
    samples: int = 1024,
    config: FineTuneConfig | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    backbone: tuple[LeNet5, dict[str, Any]] | None = None,
    task: DriftTask | None = None,
    eval_samples: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> RunResult:
    """Fine-tune ``method`` on a drift task and evaluate before and after."""
    config = config or FineTuneConfig(lr=DEFAULT_LR.get(dataset, 0.1))
    if threads is not None:
        torch.set_num_threads(threads)
    model, meta = backbone or load_backbone(dataset, checkpoint)
    task = task or make_task(
        dataset, angle=angle, samples=samples, seed=config.seed, eval_samples=eval_samples, data_dir=data_dir
    )
    m = create(method, model, config)
    ev = task.evaluate
    before = accuracy(m.logits(ev.images), ev.labels)
    fit = m.fit(task.finetune)
    after = accuracy(m.logits(ev.images), ev.labels)
    record = {
        "method": method,
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
        "config": config.to_dict(),
        "checkpoint": {k: meta.get(k) for k in ("architecture", "dataset", "seed", "test_accuracy", "weights_sha256")},
    }
    return RunResult(m, record)


def config_for(dataset: str, **overrides: Any) -> FineTuneConfig:
    """The default config for a dataset (its paper lr), with ``None`` overrides ignored."""
    base = FineTuneConfig(lr=DEFAULT_LR.get(dataset, 0.1))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
