"""Every setting of instantft, declared once: one typed model per concept, with its default, its
constraint and its help text on the field.

- :class:`Task` - which data a run fine-tunes and evaluates on;
- :class:`Source` - which frozen network, and the taps its adapters read;
- :class:`Training` - the optimiser and its schedule;
- :class:`Adapters` - the LoRA / skip-adapter shape and initialisation;
- :class:`FineTuneConfig` - training + adapters: what a method is built with and what an adapter
  record saves, as it is;
- :class:`Runtime` - how this process runs (engine, threads, the cache fill and its budget,
  where data is looked for). Never saved: a result does not depend on it, as PEFT keeps
  ``LoraRuntimeConfig`` out of ``adapter_config.json``.

The command line is derived from these models (:mod:`instantft.cli`: a field ``batch_size`` is
the flag ``--batch-size``, its docstring the help) and the Python API takes them as keywords.
A value out of range raises :class:`SettingsError` naming the field; the CLI turns the field into
its flag in one place.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Self

from instantft.errors import InstantFTError

#: what one run may allocate for the adapters' tensors, their gradients and the Forward Cache
MEMORY_BUDGET_BYTES = 2 * 2**30
#: at most this many SGD steps in one run (epochs x steps per epoch)
MAX_STEPS = 10_000_000
MAX_RANK = 4096  # a rank past min(d_in, d_out) adds nothing; 4096 is above every in-tree layer width
MAX_BATCH = 1 << 20
MAX_SAMPLES = 2**31 - 1
#: fine-tuning samples of a built-in drift task (the paper's: 1024 = 51 x 20 + 4)
TASK_SAMPLES = 1024
#: the fraction of the user's own data fine-tuned on when no sample count is given
USER_FRACTION = 0.8
FLOAT32_MAX = 3.4028234663852886e38

#: set while a record read from a file is validated: no coercion (the command line's strings are)
_STRICT: ContextVar[bool] = ContextVar("strict_settings", default=False)

Seed = Annotated[int, Field(ge=0, lt=2**63)]
def _float32(x: float) -> float:
    if abs(x) > FLOAT32_MAX:
        raise ValueError(f"must be at most {FLOAT32_MAX:.6g} in magnitude (float32), got {x:g}")
    return x


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False), AfterValidator(_float32)]


class SettingsError(InstantFTError):
    """A setting out of range: ``field`` is its name (``adapters.rank`` style for nested models).
    Not a ``ValueError``, so raised inside a validator it reaches the caller as it is."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}" if field else problem)

    @classmethod
    def of(cls, exc: ValidationError) -> SettingsError:
        """The first problem pydantic found, as one line naming the field."""
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        text = str(err["msg"])
        words = (("Input should be ", "must be "), ("Value error, ", ""), ("Assertion failed, ", ""),
                 ("greater than or equal to", ">="), ("less than or equal to", "<="), ("greater than", ">"),
                 ("less than", "<"))  # fmt: skip
        for before, after in words:
            text = text.replace(before, after)
        if err["type"] == "extra_forbidden":
            text = "is not a setting"
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            text = f"{text}, got {err['input']!r}"
        return cls(field, text)


@contextmanager
def strict_settings() -> Iterator[None]:
    """Inside: settings are validated strictly, as read from a file (no string -> number coercion)."""
    token = _STRICT.set(True)
    try:
        yield
    finally:
        _STRICT.reset(token)


@functools.cache
def _path_fields(cls: type[BaseModel]) -> frozenset[str]:
    return frozenset(n for n, f in cls.model_fields.items() if "Path" in str(f.annotation))


class Settings(BaseModel):
    """Frozen, every field checked on construction, unknown names refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, validate_default=False)

    def __init__(self, /, **data: Any) -> None:
        strict = _STRICT.get()
        if strict:  # JSON has no path type: a path field is a string in a file
            data = {k: Path(v) if isinstance(v, str) and k in _path_fields(type(self)) else v for k, v in data.items()}
        try:  # what BaseModel.__init__ does, with pydantic's error turned into one line
            self.__pydantic_validator__.validate_python(data, self_instance=self, strict=strict)
        except ValidationError as exc:
            if strict:  # inside a record: the record's validation names the whole path
                raise
            raise SettingsError.of(exc) from None

    @classmethod
    def load(cls, data: Any, where: str = "") -> Self:
        """Validate a record read from a file (strict: JSON's 1, 1.0 and true stay distinct)."""
        if not isinstance(data, dict):
            raise InstantFTError(f"{where}: expected an object, got {type(data).__name__}")
        try:
            with strict_settings():
                return cls(**data)
        except ValidationError as exc:
            err = SettingsError.of(exc)
            raise InstantFTError(f"{where}: {err}" if where else str(err)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like a new one."""
        return type(self)(**{**self.model_dump(exclude_unset=True), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Task(Settings):
    """Which data: a built-in drift task or your own files, and how it is split."""

    dataset: str | None = None
    """Built-in drift task: rotmnist, rotfmnist, svhn, or a cooling-fan task: fan (= fan-silentA-noisy),
    fan-silentB-noisy, fan-silentA-silentB, fan-12cm-14cm, fan-12cm-8cm."""
    data: Path | None = None
    """Your own data instead: an image folder (one sub-folder per class, PNG/JPEG) or a .npz file with x and y."""
    angle: Annotated[float, Field(ge=-360, le=360, allow_inf_nan=False)] = 90.0
    """Rotation in degrees, -360..360 (rotmnist and rotfmnist)."""
    samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None
    """Fine-tuning samples (default: 1024 for a built-in task, 80 % of your own data)."""
    eval_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None
    """Limit the evaluation set (default: all that are not fine-tuned on)."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.dataset is not None and self.data is not None:
            raise SettingsError("data", "replaces a built-in dataset: give one or the other")
        return self

    @property
    def name(self) -> str:
        """The built-in task's name, or the name of the user's data (its file or folder name)."""
        if self.dataset is not None:
            return self.dataset
        return "" if self.data is None else (self.data.stem or str(self.data))

    def finetune_samples(self, available: int | None = None) -> int:
        """The fine-tuning sample count: as given, else the task's default."""
        if self.samples is not None:
            return self.samples
        if self.data is None or available is None:
            return TASK_SAMPLES
        return max(1, int(available * USER_FRACTION))


class Source(Settings):
    """Which frozen backbone: a bundled one, a checkpoint from `instantft pretrain`, or your own model."""

    backbone: str | None = None
    """Bundled backbone for a built-in task: lenet5 (the paper's, default), mlp or resnet8."""
    checkpoint: Path | None = None
    """Checkpoint from `instantft pretrain` (default: the bundled one for the dataset)."""
    model: str | None = None
    """Your own model: package.module:factory, a function returning the torch.nn.Module (batch -> logits)."""
    weights: Path | None = None
    """Weights for --model: a .safetensors state dict (never pickle)."""
    taps: str = "auto"
    """Taps feeding the skip adapters: auto (the input of every Conv2d and Linear) or comma-separated
    module names (exact, suffix or re:regex; name:output for a module's output)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.model is not None:
            module, sep, attr = self.model.partition(":")
            if not sep or not module or not attr.isidentifier():
                raise SettingsError("model", f"must be package.module:factory, got {self.model!r}")
            if self.backbone is not None:
                raise SettingsError("model", "replaces a bundled backbone: give one or the other")
            if self.checkpoint is not None:
                raise SettingsError("checkpoint", "is an in-tree network's; with your own model give weights")
        elif self.weights is not None:
            raise SettingsError("weights", "need a model (the function that builds the network)")
        if not self.tap_spec:
            raise SettingsError("taps", "must be auto or comma-separated module names")
        return self

    @property
    def tap_spec(self) -> str | list[str]:
        if self.taps.strip() == "auto":
            return "auto"
        return [t.strip() for t in self.taps.split(",") if t.strip()]


class Training(Settings):
    """The optimiser and its schedule: plain SGD on softmax cross-entropy, as in the paper (§5.1)."""

    epochs: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 10
    """Passes over the fine-tuning set."""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 20
    """Samples per SGD step."""
    lr: Positive = 0.1
    """Learning rate (the paper's; a built-in task may state its own, svhn 0.025)."""
    seed: Seed = 0
    """Seed of the split, the batch order and (unless init_seed is given) the adapter init, 0 <= seed < 2**63."""
    drop_last: bool = True
    """Drop each epoch's last partial batch (1024 = 51 x 20 + 4: the paper's N / batch steps)."""


class Adapters(Settings):
    """The LoRA / skip-adapter shape and its initialisation (B = 0, so an adapter starts as a no-op)."""

    rank: Annotated[int, Field(ge=1, le=MAX_RANK)] = 4
    """LoRA rank r."""
    scale: Positive = 1.0
    """LoRA output multiplier alpha / r."""
    init: Literal["gaussian", "kaiming"] = "gaussian"
    """Init of A: gaussian N(0, init_std²) or PEFT's kaiming-uniform."""
    init_std: Positive = 0.1
    """Standard deviation of the Gaussian init of A."""
    init_seed: Seed | None = None
    """Adapter init seed (default: the training seed)."""
    last_layer: str | None = None
    """The module ft-last / lora-last train, by name (default: the last Linear the forward runs)."""
    train_a: bool = True
    """Train A as well as B; off: A stays at its seeded init and only B is trained and saved (the LoRA and skip
    methods; a fleet then averages the adapters exactly)."""


class FineTuneConfig(Training, Adapters):
    """What a method is built with: the training and adapter settings. An adapter record saves it
    as it is, so a reload rebuilds exactly the run's method."""

    @property
    def adapter_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def training(self) -> Training:
        return Training(**{k: getattr(self, k) for k in Training.model_fields})

    @property
    def adapters(self) -> Adapters:
        return Adapters(**{k: getattr(self, k) for k in Adapters.model_fields})

    @classmethod
    def of(cls, training: Training, adapters: Adapters) -> FineTuneConfig:
        return cls(**training.model_dump(exclude_unset=True), **adapters.model_dump(exclude_unset=True))

    @classmethod
    def load_record(cls, data: Any, where: str = "") -> FineTuneConfig:
        """A saved config; keys of runtime settings that older versions saved with it are dropped."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in Runtime.model_fields}
        return cls.load(data, where)


#: learning rates a dataset states for itself (the paper's, §5.1); every other: :attr:`Training.lr`'s default
#: the fan tasks (by their source): 0.03, as at 0.1 the noisy room's spectra, far outside the source's
#: statistics, make InstantFT's first steps diverge (docs/sensors.md)
DATASET_LR = {"svhn": 0.025, "fan-silentA": 0.03, "fan-silentB": 0.03, "fan-12cm": 0.03}


T = TypeVar("T", bound=Training)


def training_for(dataset: str | None, training: T) -> T:
    """``training`` (or a config made of it) with the dataset's own learning rate, unless one was given."""
    if dataset in DATASET_LR and "lr" not in training.model_fields_set:
        return training.replace(lr=DATASET_LR[dataset])
    return training


class Pretraining(Settings):
    """What ``instantft pretrain`` trains: a backbone family on a base dataset."""

    dataset: Literal["mnist", "fmnist", "svhn", "fan", "fan-silentA", "fan-silentB", "fan-12cm"]
    """Base dataset; or the cooling-fan spectra of one room (fan = fan-silentA, fan-silentB) or fan size (fan-12cm)."""
    samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] | None = None
    """First N training samples (default: all)."""
    backbone: Literal["lenet5", "mlp", "resnet8"] | None = None
    """Architecture family: lenet5 (the paper's; default), mlp (3 layers; the fan's default) or resnet8
    (BatchNorm, residual blocks)."""

    @property
    def family(self) -> str:
        return self.backbone or ("mlp" if self.dataset.startswith("fan") else "lenet5")

    @property
    def source(self) -> str:
        """The dataset the backbone is named after (fan is fan-silentA)."""
        return "fan-silentA" if self.dataset == "fan" else self.dataset


class PretrainConfig(Pretraining):
    """A pre-training run: the backbone and data, and the paper's schedule (SGD, 10 epochs,
    batch 20, lr 0.1; SVHN 0.025)."""

    training: Training = Training()

    @property
    def schedule(self) -> Training:
        """The training settings with the dataset's own learning rate unless one was given (the fan's
        lower rate is for fine-tuning: its backbone is pre-trained at the paper's 0.1)."""
        return training_for(None if self.dataset.startswith("fan") else self.dataset, self.training)


def max_threads() -> int:
    """The threads a run may ask for: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


Engine = Literal["auto", "c", "reference"]


class Runtime(Settings):
    """How this process runs a fine-tune; never saved with a result."""

    engine: Engine = "auto"
    """Training loop of skip-lora, skip2-lora and instantft: c (the compiled core), reference (plain torch),
    or auto (c when it was built)."""
    threads: Annotated[int, Field(ge=1)] | None = None
    """Threads for torch and the C core, 1..the CPUs this process may use (default: torch's choice)."""
    cache_fill: Literal["batched", "lazy"] = "batched"
    """Fill the Forward Cache in one batched pass before training, or on each sample's first visit."""
    cache_max_bytes: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    """Refuse a Forward Cache larger than this many bytes (default: the run's memory budget)."""
    data_dir: Path | None = None
    """Where dataset files are looked for first."""

    @model_validator(mode="after")
    def _threads_available(self) -> Self:
        if self.threads is not None and self.threads > max_threads():
            most = max_threads()
            raise SettingsError("threads", f"must be <= {most} (the CPUs this process may use), got {self.threads}")
        return self


def human_bytes(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_steps(epochs: int, samples: int, batch_size: int) -> None:
    """epochs x steps per epoch within :data:`MAX_STEPS` (checked before any batch is built)."""
    steps = epochs * max(1, math.ceil(samples / batch_size))
    if steps > MAX_STEPS:
        raise SettingsError(
            "epochs",
            f"{epochs} x {math.ceil(samples / batch_size)} steps per epoch = {steps:,} steps, "
            f"more than the {MAX_STEPS:,} a run may take",
        )


def check_adapter_memory(rank: int, sizes: list[int], num_classes: int, cache_bytes: int = 0) -> None:
    """Refuse a rank whose adapters (A: r x d_k, B: C x r per tap, each with its gradient) and the
    Forward Cache would exceed :data:`MEMORY_BUDGET_BYTES`, before anything is allocated."""
    need = 2 * 4 * rank * sum(d + num_classes for d in sizes) + cache_bytes
    if need > MEMORY_BUDGET_BYTES:
        raise SettingsError(
            "rank",
            f"{rank} needs {human_bytes(need)} for the adapters, their gradients and the cache, "
            f"more than the {human_bytes(MEMORY_BUDGET_BYTES)} memory budget",
        )
