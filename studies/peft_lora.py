"""The LoRA peer: the same LeNet-5 with Hugging Face PEFT's LoRA (r = 4 on conv1, conv2, fc1, fc2,
fc3, trained the usual way: module forward, autograd, ``torch.optim.SGD``) beside instantft's
LoRA-All, Skip2-LoRA and InstantFT, on the same RotMNIST samples, batches, lr and epochs; median
seconds of interleaved rounds after a warm-up, and accuracy on the held-out images:

    python studies/peft_lora.py --out results/peft           (needs the 'bench' extra: peft)
"""

from __future__ import annotations

import copy
import functools
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from _common import ROOT, StudyParser, md_table
from instantft import bench
from instantft.data import ImageSet, make_task
from instantft.errors import InstantFTError
from instantft.extras import require
from instantft.fileio import atomic_write_json, atomic_write_text
from instantft.methods import FineTuneConfig, create
from instantft.models import LeNet5, accuracy
from instantft.progress import progress_bar
from instantft.run import config_for, load_backbone

PEFT_ROW = "peft-lora"
ROWS = ("lora-all", "skip2-lora", "instantft")


class PeftLoRA:
    """PEFT's LoRA (r = ``rank`` on conv1, conv2, fc1, fc2, fc3) on a copy of the backbone, trained
    the usual way with the same batches, lr and epochs as instantft's methods."""

    name = PEFT_ROW

    def __init__(self, base: LeNet5, config: FineTuneConfig) -> None:
        peft = require("bench", "peft", "studies/peft_lora.py")
        self.config = config
        torch.manual_seed(config.adapter_seed)
        targets = ["conv1", "conv2", "fc1", "fc2", "fc3"]
        lora = peft.LoraConfig(r=config.rank, lora_alpha=config.rank, target_modules=targets, lora_dropout=0.0)
        self.model = peft.get_peft_model(copy.deepcopy(base), lora)

    def fit(self, data: ImageSet) -> Any:
        import torch.nn.functional as F

        from instantft.methods.base import FitResult, check_loss, schedule

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.config.lr)
        self.model.train()
        result = FitResult()
        for epoch, step, rows in schedule(len(data), self.config):  # as AutogradMethod.fit
            loss = F.cross_entropy(self.model(data.images[rows]), data.labels[rows])
            check_loss(float(loss.detach()), epoch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
        self.model.eval()
        return result

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(images[i : i + 2048]) for i in range(0, len(images), 2048)])


def measure(threads: int, repeats: int, samples: int, angle: float, data_dir: str | None) -> dict[str, Any]:
    require("bench", "peft", "studies/peft_lora.py")  # before any work
    torch.set_num_threads(threads)
    model, _ = load_backbone("rotmnist")
    assert isinstance(model, LeNet5)
    task = make_task("rotmnist", angle=angle, samples=samples, seed=0, data_dir=data_dir)
    config = config_for("rotmnist")
    makers: dict[str, Any] = {row: functools.partial(create, row, model, config) for row in ROWS}
    makers[PEFT_ROW] = functools.partial(PeftLoRA, model, config)
    rows: dict[str, dict[str, Any]] = {}
    with progress_bar() as bar:
        task_id = bar.add_task("peft peer", total=len(makers) * (1 + repeats), status="warm-up")
        for row, make in makers.items():
            _, fit, method = bench.timed_fit(make, task.finetune)
            acc = accuracy(method.logits(task.evaluate.images), task.evaluate.labels)
            rows[row] = {"runs": [], "steps": fit.steps, "accuracy": acc}
            bar.advance(task_id)
        for rnd in range(repeats):
            bar.update(task_id, status=f"round {rnd + 1}/{repeats}")
            for row, make in makers.items():
                rows[row]["runs"].append(bench.timed_fit(make, task.finetune)[0])
                bar.advance(task_id)
    for r in rows.values():
        r["seconds"] = statistics.median(r["runs"])
    peer = rows[PEFT_ROW]["seconds"]
    for r in rows.values():
        r["x_faster_than_peft"] = peer / r["seconds"]
    return {
        "methods": rows,
        "setup": {"dataset": "rotmnist", "angle": angle, "samples": len(task.finetune),
                  "eval_samples": len(task.evaluate), "epochs": config.epochs, "batch_size": config.batch_size,
                  "lr": config.lr, "rank": config.rank, "repeats": repeats, "threads": threads},
        "machine": bench.machine(threads),
    }


def markdown(out: dict[str, Any], command: str) -> str:
    st = out["setup"]
    rows = [[name, f"{r['seconds']:.4f}", f"{r['x_faster_than_peft']:.1f}", f"{100 * r['accuracy']:.2f} %", r["steps"]]
            for name, r in out["methods"].items()]  # fmt: skip
    return "\n".join([
        "# instantft beside PEFT's LoRA",
        "",
        f"RotMNIST {st['angle']:g}°, {st['samples']} samples, {st['epochs']} epochs, batch {st['batch_size']}, "
        f"rank {st['rank']}, lr {st['lr']}; median of {st['repeats']} interleaved rounds after a warm-up, "
        f"{st['threads']} threads; accuracy on {st['eval_samples']:,} held-out images.",
        "",
        md_table(["method", "seconds", "× faster than peft-lora", "accuracy", "steps"], rows),
        f"Reproduce: `{command}`",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = StudyParser(prog="python studies/peft_lora.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--angle", type=float, default=90.0)
    p.add_argument("--out", default=str(ROOT / "results" / "peft"), help="writes DIR/peft.json and DIR/peft.md")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    command = " ".join(["python studies/peft_lora.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        out = measure(args.threads, args.repeats, args.samples, args.angle, args.data_dir)
    except InstantFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    d = Path(args.out)
    atomic_write_json(d / "peft.json", {**out, "command": command})
    atomic_write_text(d / "peft.md", markdown(out, command))
    print(markdown(out, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
