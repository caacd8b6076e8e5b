"""Pre-training the backbone (paper §5.1: SGD, 10 epochs, batch 20, lr 0.1; 0.025 for SVHN)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from instantft.data import ImageSet, pretraining_set
from instantft.errors import InstantFTError
from instantft.models import FAMILIES, accuracy, arch_for, build, predict, save_checkpoint
from instantft.progress import progress_bar


@dataclass(frozen=True)
class PretrainConfig:
    dataset: str = "mnist"
    samples: int | None = None
    epochs: int = 10
    batch_size: int = 20
    lr: float | None = None  # None: the paper's (0.1, or 0.025 for SVHN)
    seed: int = 0
    backbone: str = "lenet5"  # the architecture family (models.FAMILIES): lenet5, mlp, resnet8

    def __post_init__(self) -> None:
        if self.backbone not in FAMILIES:
            raise InstantFTError(f"unknown backbone {self.backbone!r}; valid: {', '.join(FAMILIES)}")
        arch_for(self.backbone, self.dataset)  # one line if this family has no network for the dataset
        if self.epochs < 1:
            raise InstantFTError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InstantFTError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InstantFTError(f"--lr must be a finite number > 0, got {self.lr}")

    @property
    def arch(self) -> str:
        return arch_for(self.backbone, self.dataset)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.025 if self.dataset == "svhn" else 0.1)


def pretrain(
    config: PretrainConfig,
    data: tuple[ImageSet, ImageSet] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh backbone; return it and its checkpoint metadata (with test accuracy)."""
    train, test = data if data is not None else pretraining_set(config.dataset, config.samples, data_dir=data_dir)
    torch.manual_seed(config.seed)
    model = build(config.arch)
    model.train()  # BatchNorm learns its statistics here, and only here
    opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    gen = torch.Generator().manual_seed(config.seed)
    n, bs = len(train), config.batch_size
    steps = math.ceil(n / bs)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"pretrain {config.arch} on {config.dataset}", total=config.epochs * steps, status="")
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen)
            loss_sum, correct = 0.0, 0
            for step in range(steps):
                rows = perm[step * bs : (step + 1) * bs]
                x, y = train.images[rows], train.labels[rows]
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise InstantFTError(
                        f"pre-training diverged: loss is {loss_value} at epoch {epoch + 1}, step {step + 1}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss_value * len(rows)
                correct += int((logits.argmax(1) == y).sum())
                if step % 50 == 0 or step == steps - 1:
                    seen = min((step + 1) * bs, n)
                    bar.update(
                        task,
                        completed=epoch * steps + step + 1,
                        status=f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.4f} acc {correct / seen:.4f}",
                    )
    test_acc = accuracy(predict(model, test.images), test.labels)
    meta = {
        "dataset": config.dataset,
        "train_split": train.name,
        "samples": len(train),
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.learning_rate,
        "test_accuracy": test_acc,
    }
    return model, meta


def pretrain_to_file(config: PretrainConfig, out: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    model, meta = pretrain(config, **kwargs)
    save_checkpoint(Path(out), model, meta)
    return meta
