"""``instantft demo``: every method on RotFMNIST 75° (the talk's results table), seed 0, using
only the checkpoint and test split bundled in the package."""

from __future__ import annotations

import os

from rich.console import Console

from instantft.data import make_task
from instantft.methods import method_names
from instantft.models import accuracy, predict
from instantft.run import Prepared, Run, config_for, finetune, load_backbone
from instantft.settings import Task
from instantft.tables import print_runs


def demo(angle: float = 75.0, seed: int = 0, data_dir: str | os.PathLike[str] | None = None) -> list[dict]:
    console = Console()
    backbone = load_backbone("rotfmnist")
    model, meta = backbone
    upright = make_task("rotfmnist", angle=0.0, seed=seed, data_dir=data_dir)
    task = make_task("rotfmnist", angle=angle, seed=seed, data_dir=data_dir)
    before = accuracy(predict(model, task.evaluate.images), task.evaluate.labels)
    prepared = Prepared(model, meta, task, accuracy_before=before)
    console.print(
        f"backbone: LeNet-5 pre-trained on Fashion-MNIST (test accuracy {100 * meta['test_accuracy']:.2f} %); "
        f"on the {len(task.evaluate)} evaluation images upright: "
        f"{100 * accuracy(predict(model, upright.evaluate.images), upright.evaluate.labels):.2f} %, "
        f"rotated {angle:g}°: {100 * before:.2f} %"
    )
    records = []
    with console.status("fine-tuning") as status:
        for name in method_names():
            status.update(f"fine-tuning {name} on {len(task.finetune)} rotated images")
            config = config_for("rotfmnist", seed=seed)
            run = Run(method=name, task=Task(dataset="rotfmnist", angle=angle), config=config)
            records.append(finetune(run, prepared=prepared).record)
    print_runs(
        records,
        title=f"RotFMNIST {angle:g}°, seed {seed}: 10 epochs over {len(task.finetune)} samples",
        console=console,
    )
    console.print(
        "Times are one run each; the first method on the compiled engine (skip2-lora) also pays for loading it. "
        "Medians: `instantft bench`."
    )
    return records
