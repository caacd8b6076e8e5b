"""Typed settings of a fine-tuning run, grouped by what they are about: the task and its data,
the model, training and its loop, the adapters, the Forward Cache, the numerics and the runtime.

Each field's docstring is its help text, and each group checks its own ranges (both ends) in
``__post_init__`` with a one-line :class:`InstantFTError`; the command line is derived from
these classes (:mod:`instantft.cli`), so a flag, its type, its help and its check are written
once. ``None`` means "the default", resolved where it depends on something else (the dataset's
learning rate, the adapter record's task). :func:`instantft.run.fine_tune_config` maps the
groups onto :class:`instantft.methods.FineTuneConfig`, which the methods take.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from instantft.errors import InstantFTError

if TYPE_CHECKING:
    from instantft.fixedpoint import FixedPointConfig

#: what one run may allocate for the adapters' tensors, their gradients and the Forward Cache
MEMORY_BUDGET_BYTES = 2 * 2**30
#: at most this many SGD steps in one run (epochs x steps per epoch)
MAX_STEPS = 10_000_000
SEED_LIMIT = 2**63  # seeds are torch.Generator seeds: 0 <= seed < 2**63
FLOAT32_MAX = 3.4028234663852886e38
MAX_RANK = 4096  # a rank past min(d_in, d_out) adds nothing; 4096 is above every in-tree layer width
MAX_BATCH = 1 << 20
MAX_SAMPLES = 2**31 - 1
MAX_ANGLE = 360.0


def max_threads() -> int:
    """The threads a run may ask for: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_int(flag: str, value: int | None, lo: int, hi: int, why: str = "") -> None:
    """``lo <= value <= hi`` (``None`` passes: it means the default)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InstantFTError(f"{flag} must be an integer, got {value!r}")
    if value < lo:
        raise InstantFTError(f"{flag} must be >= {lo}, got {value}")
    if value > hi:
        raise InstantFTError(f"{flag} must be <= {hi}{f' ({why})' if why else ''}, got {value}")


def check_float(flag: str, value: float | None, *, positive: bool = True, hi: float = FLOAT32_MAX) -> None:
    """A finite number (the training loops run in float32: it must fit), > 0 unless stated."""
    if value is None:
        return
    if not math.isfinite(value):
        raise InstantFTError(f"{flag} must be a finite number, got {value}")
    if positive and value <= 0:
        raise InstantFTError(f"{flag} must be a finite number > 0, got {value}")
    if abs(value) > hi:
        raise InstantFTError(f"{flag} must be at most {hi:g} in magnitude (float32), got {value:g}")


@dataclass(frozen=True)
class TaskConfig:
    """Which data: a built-in drift task or your own files, and how it is split."""

    dataset: str | None = None
    """Built-in drift task: rotmnist, rotfmnist or svhn."""
    data: Path | None = None
    """Your own data instead: an image folder (one sub-folder per class, PNG/JPEG) or a .npz file with x and y."""
    angle: float | None = None
    """Rotation in degrees, -360..360 (rotmnist/rotfmnist; default 90)."""
    samples: int | None = None
    """Fine-tuning samples (default 1024; with --data 80 % of the samples)."""
    eval_samples: int | None = None
    """Limit the evaluation set (default: all that are not fine-tuned on)."""
    seed: int | None = None
    """Seed of the split, the batch order and the adapter init, 0 <= seed < 2**63 (default 0)."""

    def __post_init__(self) -> None:
        if self.angle is not None and not math.isfinite(self.angle):
            raise InstantFTError(f"--angle must be a finite number of degrees, got {self.angle}")
        if self.angle is not None and abs(self.angle) > MAX_ANGLE:
            raise InstantFTError(f"--angle must be in -360..360 degrees, got {self.angle:g}")
        check_int("--samples", self.samples, 1, MAX_SAMPLES)
        check_int("--eval-samples", self.eval_samples, 1, MAX_SAMPLES)
        check_int("--seed", self.seed, 0, SEED_LIMIT - 1, "seeds are 63-bit")
        if self.dataset is not None and self.data is not None:
            raise InstantFTError("give --dataset (a built-in task) or --data (your own files), not both")


@dataclass(frozen=True)
class ModelConfig:
    """Which frozen backbone: a bundled one, a checkpoint from `instantft pretrain`, or your own model."""

    backbone: str | None = None
    """Bundled backbone for a built-in task: lenet5 (the paper's, default), mlp or resnet8."""
    checkpoint: Path | None = None
    """Checkpoint from `instantft pretrain` (default: the bundled one for the dataset)."""
    model: str | None = None
    """Your own model: package.module:factory, a function returning the torch.nn.Module
    (a classifier: batch -> logits)."""
    weights: Path | None = None
    """Weights for --model: a .safetensors state dict (safetensors.torch.load_file; never pickle)."""
    taps: str = "auto"
    """Taps feeding the skip adapters: auto (the input of every Conv2d and Linear) or
    comma-separated module names (exact, suffix or re:regex; name:output for a module's output)."""

    def __post_init__(self) -> None:
        from instantft.models import FAMILIES

        if self.backbone is not None and self.backbone not in FAMILIES:
            raise InstantFTError(f"--backbone must be one of {', '.join(FAMILIES)}, got {self.backbone!r}")
        if self.model is not None:
            if self.backbone is not None:
                raise InstantFTError("give --backbone (a bundled network) or --model (your own), not both")
            module, sep, attr = self.model.partition(":")
            if not sep or not module or not attr.isidentifier():
                raise InstantFTError(f"--model must be package.module:factory, got {self.model!r}")
            if self.checkpoint is not None:
                raise InstantFTError("--checkpoint is an in-tree checkpoint; with --model give --weights")
        elif self.weights is not None:
            raise InstantFTError("--weights needs --model (the function that builds the network)")
        if not self.tap_spec:
            raise InstantFTError("--taps must be auto or comma-separated module names")

    @property
    def tap_spec(self) -> str | list[str]:
        if self.taps.strip() == "auto":
            return "auto"
        return [t.strip() for t in self.taps.split(",") if t.strip()]


@dataclass(frozen=True)
class TrainingConfig:
    """The optimiser and its schedule (plain SGD, softmax cross-entropy, as in the paper)."""

    epochs: int | None = None
    """Passes over the fine-tuning set (default 10)."""
    batch_size: int | None = None
    """Samples per SGD step (default 20)."""
    lr: float | None = None
    """Learning rate (default 0.1; 0.025 for svhn)."""

    def __post_init__(self) -> None:
        check_int("--epochs", self.epochs, 1, MAX_STEPS, f"at most {MAX_STEPS:,} steps in a run")
        check_int("--batch-size", self.batch_size, 1, MAX_BATCH)
        check_float("--lr", self.lr)


@dataclass(frozen=True)
class LoopConfig:
    """How the fine-tuning loop runs its batches."""

    drop_last: bool | None = None
    """Drop each epoch's last partial batch (default: drop)."""
    engine: str | None = None
    """Training loop of skip-lora/skip2-lora/instantft: auto, numba, torch, reference, ... (default auto)."""


@dataclass(frozen=True)
class AdapterConfig:
    """The LoRA / skip-adapter shape and its initialisation (B = 0, so an adapter starts as a no-op)."""

    rank: int | None = None
    """LoRA rank r (default 4)."""
    scale: float | None = None
    """LoRA output multiplier alpha/r (default 1)."""
    init: Literal["gaussian", "kaiming"] | None = None
    """Init of A: gaussian N(0, init_std²) or PEFT's kaiming-uniform (default gaussian)."""
    init_std: float | None = None
    """Standard deviation of the Gaussian init of A (default 0.1)."""
    init_seed: int | None = None
    """Adapter init seed, 0 <= seed < 2**63 (default: --seed)."""
    last_layer: str | None = None
    """The module ft-last / lora-last train, by name (default: the last Linear the forward runs)."""

    def __post_init__(self) -> None:
        check_int("--rank", self.rank, 1, MAX_RANK)
        check_float("--scale", self.scale)
        check_float("--init-std", self.init_std)
        check_int("--init-seed", self.init_seed, 0, SEED_LIMIT - 1, "seeds are 63-bit")


@dataclass(frozen=True)
class CacheConfig:
    """The Forward Cache of skip2-lora / instantft."""

    cache_fill: Literal["batched", "lazy"] | None = None
    """Fill the cache in one batched pass before training, or lazily on each sample's first visit (default batched)."""
    cache_max_bytes: int | None = None
    """Fail if the Forward Cache would grow past this many bytes (default: the run's memory budget)."""

    def __post_init__(self) -> None:
        check_int("--cache-max-bytes", self.cache_max_bytes, 0, SEED_LIMIT - 1)


@dataclass(frozen=True)
class NumericsConfig:
    """Fixed-point numerics: the FPGA core's integer datapath (instantft only)."""

    numerics: Literal["float", "fixed"] = "float"
    """float, or fixed: InstantFT in the FPGA core's integer arithmetic."""
    act_format: str | None = None
    """Activations, Qm.n with m counting the sign (default Q8.16)."""
    param_format: str | None = None
    """Parameters and gradients (default Q4.12)."""
    rounding: Literal["round-half-up", "truncate"] | None = None
    """Rounding of fixed-point products (default round-half-up)."""
    softmax_table_size: int | None = None
    """Entries per softmax table, a power of two up to 2**20 (default 1024)."""
    softmax_range: float | None = None
    """Exp table input range, a power of two (default 8)."""

    def fixed(self) -> FixedPointConfig | None:
        """The fixed-point config, or ``None`` for float numerics (which take no fixed option)."""
        from instantft.fixedpoint import numerics_config

        return numerics_config(
            self.numerics, self.act_format, self.param_format, self.rounding, self.softmax_table_size,
            self.softmax_range,
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the process runs and what it reads."""

    threads: int | None = None
    """Torch threads, 1..the CPUs this process may use (default: torch's choice)."""
    data_dir: Path | None = None
    """Where dataset files are looked for first."""

    def __post_init__(self) -> None:
        check_int("--threads", self.threads, 1, max_threads(), "the CPUs this process may use")


@dataclass(frozen=True)
class RunConfig:
    """One fine-tuning run: every group above."""

    method: str
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    numerics: NumericsConfig = field(default_factory=NumericsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if self.task.dataset is None and self.task.data is None:
            raise InstantFTError("give --dataset (rotmnist, rotfmnist, svhn) or --data (an image folder or .npz file)")
        if self.model.model is not None and self.task.data is None:
            raise InstantFTError("--model needs --data: the built-in tasks run on the bundled backbones (--backbone)")
        samples = self.task.samples if self.task.samples is not None else 1024
        check_steps(self.fine_tune_defaults("epochs"), samples, self.fine_tune_defaults("batch_size"))

    @property
    def seed(self) -> int:
        return self.task.seed if self.task.seed is not None else 0

    @property
    def dataset(self) -> str:
        """The built-in task's name, or the name of the user's data (its file or folder name)."""
        if self.task.dataset is not None:
            return self.task.dataset
        assert self.task.data is not None
        return self.task.data.stem or str(self.task.data)

    def fine_tune_defaults(self, name: str) -> Any:
        given = getattr(self.training, name, None)
        return given if given is not None else {"epochs": 10, "batch_size": 20}[name]

    def groups(self) -> dict[str, Any]:
        """The fields of the groups :class:`FineTuneConfig` is made of (``None`` = its default)."""
        chosen: dict[str, Any] = {}
        for group in (self.training, self.loop, self.adapter, self.cache):
            chosen.update({f.name: getattr(group, f.name) for f in fields(group)})
        return chosen


def human_bytes(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_steps(epochs: int, samples: int, batch_size: int) -> None:
    """epochs x steps per epoch within :data:`MAX_STEPS` (checked before any batch is built)."""
    steps = epochs * max(1, math.ceil(samples / batch_size))
    if steps > MAX_STEPS:
        raise InstantFTError(
            f"--epochs {epochs} x {math.ceil(samples / batch_size)} steps per epoch = {steps:,} steps, "
            f"more than the {MAX_STEPS:,} a run may take"
        )


def check_adapter_memory(rank: int, sizes: list[int], num_classes: int, cache_bytes: int = 0) -> None:
    """Refuse a rank whose adapters (A: r x d_k, B: C x r per tap, each with its gradient) and the
    Forward Cache would exceed :data:`MEMORY_BUDGET_BYTES`, before anything is allocated."""
    need = 2 * 4 * rank * sum(d + num_classes for d in sizes) + cache_bytes
    if need > MEMORY_BUDGET_BYTES:
        raise InstantFTError(
            f"--rank {rank} needs {human_bytes(need)} for the adapters, their gradients and the cache, "
            f"more than the {human_bytes(MEMORY_BUDGET_BYTES)} memory budget"
        )


# --- argparse, for subcommands defined in lower modules (reproduce, table1, bench, export, ...) --
# They build their parsers with these (``sub.add_parser(..., parents=[common()])``), so they
# never import the CLI module, which imports them.
def one_line(text: str) -> str:
    return " ".join(text.split())


class UsageError(InstantFTError):
    """A flag or value the parser refuses."""


class Parser(argparse.ArgumentParser):
    """argparse for the subcommands registered through ``instantft.cli.PARSERS``: a usage error is one
    line (raised, printed by ``instantft.cli.main``), and ``-1e-3`` / ``-.5`` / ``-inf`` are values."""

    NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {one_line(message)}")

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        """Every number at the top of its range too, whatever flag it is: an integer must fit in
        64 bits and a float must be finite (each command checks its own narrower ranges)."""
        value = super()._get_value(action, arg_string)  # type: ignore[misc]
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise argparse.ArgumentError(action, f"{arg_string} does not fit in 64 bits")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentError(action, f"must be a finite number, got {arg_string}")
        return value


def common() -> argparse.ArgumentParser:
    """Options every argparse subcommand takes (``parents=[common()]``)."""
    p = Parser(add_help=False)
    p.add_argument("--data-dir", default=None, help="where dataset files are looked for first")
    return p
