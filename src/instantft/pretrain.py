"""Pre-training the backbone (paper §5.1: SGD, 10 epochs, batch 20, lr 0.1; 0.025 for SVHN)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from instantft.data import ImageSet, pretraining_set
from instantft.errors import InstantFTError
from instantft.models import FanMLP, accuracy, arch_for, build, predict, save_checkpoint
from instantft.progress import progress_bar
from instantft.settings import PretrainConfig


def arch_of(config: PretrainConfig) -> str:
    """The in-tree architecture of the family for the dataset; one line if it has none."""
    return arch_for(config.family, config.source)


def pretrain(
    config: PretrainConfig,
    data: tuple[ImageSet, ImageSet] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh backbone; return it and its checkpoint metadata (with test accuracy)."""
    train, test = data if data is not None else pretraining_set(config.dataset, config.samples, data_dir=data_dir)
    sched = config.schedule
    torch.manual_seed(sched.seed)
    model = build(arch_of(config))
    if isinstance(model, FanMLP):  # standardised with the source's own statistics, then frozen
        model.standardize.fit(train.images)
    model.train()  # BatchNorm learns its statistics here, and only here
    opt = torch.optim.SGD(model.parameters(), lr=sched.lr)
    gen = torch.Generator().manual_seed(sched.seed)
    n, bs = len(train), sched.batch_size
    steps = math.ceil(n / bs)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"pretrain {arch_of(config)} on {config.dataset}", total=sched.epochs * steps, status="")
        for epoch in range(sched.epochs):
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
                        status=f"epoch {epoch + 1}/{sched.epochs} loss {loss_sum / seen:.4f} acc {correct / seen:.4f}",
                    )
    test_acc = accuracy(predict(model, test.images), test.labels)
    meta = {
        "dataset": config.source,
        "train_split": train.name,
        "samples": len(train),
        "seed": sched.seed,
        "epochs": sched.epochs,
        "batch_size": sched.batch_size,
        "lr": sched.lr,
        "test_accuracy": test_acc,
    }
    return model, meta


def pretrain_to_file(config: PretrainConfig, out: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    model, meta = pretrain(config, **kwargs)
    save_checkpoint(Path(out), model, meta)
    return meta
