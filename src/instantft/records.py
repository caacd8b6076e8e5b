"""Schemas of every record instantft reads back: the JSON in a checkpoint's or an adapter's
header, one run of a ``results.json``, and the device bundle manifest.

A record is checked here before any of it is used: the JSON text is bounded in size and nesting
before and while it is parsed, then validated with pydantic in strict mode - an int field refuses
a bool, a float or a string, a float field refuses NaN and infinities, seeds are 0 <= seed < 2^63,
sizes are >= 1 - and every problem becomes one line naming the file and the field
(:class:`InstantFTError`). Sizes a record claims are then checked against the tensors actually
present in the file before anything is allocated (:mod:`instantft.methods.adapter_io`).

Unknown keys are allowed and kept (``extra="allow"``) so that a newer writer can add fields
(e.g. a backbone name or a tap layout in adapters) without older readers refusing the file; the
generic bounds (size, depth) still apply to them, and a field that a reader uses must be declared
here to be used. Other modules import :class:`Record`, the field types and :func:`validate` to
declare their own schemas the same way.

pydantic was chosen over msgspec and jsonschema: it is already a dependency of the stack we
install, its strict mode gives exactly the int/bool/float distinctions JSON blurs, errors carry
the path of the failing field, and schemas are ordinary typed Python classes that mypy checks.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from instantft.errors import InstantFTError
from instantft.settings import FineTuneConfig, Runtime, Source, Task, strict_settings

#: a JSON record larger than this is refused before it is parsed
MAX_RECORD_BYTES = 1 << 20
#: deepest nesting of objects/lists accepted in a record
MAX_DEPTH = 16
#: at most this many entries in any one list or object of a record
MAX_ITEMS = 100_000

Seed = Annotated[int, Field(ge=0, lt=2**63)]
Count = Annotated[int, Field(ge=1, lt=2**63)]
NonNegInt = Annotated[int, Field(ge=0, lt=2**63)]
Dim = Annotated[int, Field(ge=0, lt=2**31)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=256)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Record(BaseModel):
    """Base of every schema: strict types, unknown keys allowed and kept."""

    model_config = ConfigDict(strict=True, extra="allow")


# --- checkpoints ------------------------------------------------------------------------------
class CheckpointRecord(Record):
    """The record of a backbone checkpoint (models/checkpoint.py)."""

    architecture: Name
    weights_sha256: Sha256
    package_version: Name | None = None
    dataset: Name | None = None
    train_split: Name | None = None
    samples: Count | None = None
    seed: Seed | None = None
    epochs: Count | None = None
    batch_size: Count | None = None
    lr: PositiveFinite | None = None
    test_accuracy: Fraction | None = None


# --- adapters ---------------------------------------------------------------------------------
def _saved_config(value: Any) -> Any:
    """A saved :class:`FineTuneConfig`; runtime settings older versions saved with it are dropped."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in Runtime.model_fields}
    return value


def saved_task(value: Any) -> Any:
    """A saved :class:`Task`; older versions kept the seed (now the config's) and the model and
    taps (now the record's ``source``) in it."""
    if isinstance(value, dict):
        dropped = ("seed", "model", "taps", "eval_images")  # eval_images: what a device manifest adds
        task = {k: v for k, v in value.items() if k not in dropped and v is not None}
        if task.get("data") is not None:  # the data's name was saved as its dataset
            task.pop("dataset", None)
        return task
    return value


SavedConfig = Annotated[FineTuneConfig, BeforeValidator(_saved_config)]
SavedTask = Annotated[Task, BeforeValidator(saved_task)]


class FixedRecord(Record):
    """The fixed-point options of an adapter trained in the FPGA datapath's numerics."""

    act_format: Name
    param_format: Name
    rounding: Name
    softmax_table_size: Annotated[int, Field(ge=2, le=1 << 20)]
    softmax_range: PositiveFinite


class AdapterRecord(Record):
    """The record of an adapter file (methods/adapter_io.py)."""

    method: Name
    config: SavedConfig
    shapes: dict[Name, Annotated[list[Dim], Field(max_length=8)]]
    base_fingerprint: Sha256
    tensors_sha256: Sha256
    architecture: Name | None = None
    backbone: Name | None = None  # the model's class name
    taps: Annotated[list[Name], Field(min_length=1, max_length=4096)] | None = None  # Tap.label, in order
    input_shape: Annotated[list[Dim], Field(min_length=1, max_length=8)] | None = None
    task: SavedTask | None = None
    data_sha256: Sha256 | None = None
    """The content of the user's ``--data`` it was fine-tuned on (``userdata.UserData.sha256``);
    ``evaluate`` refuses other data. Absent in records of older versions and of built-in tasks."""
    source: Source | None = None
    numerics: Literal["float", "fixed"] = "float"
    fixed: FixedRecord | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_source(cls, data: Any) -> Any:
        """Older records kept the user's model and taps in the task."""
        task = data.get("task") if isinstance(data, dict) else None
        if isinstance(task, dict) and "source" not in data and task.get("model") is not None:
            return {**data, "source": {"model": task["model"], "taps": task.get("taps") or "auto"}}
        return data


# --- results files ----------------------------------------------------------------------------
class RunRecord(Record):
    """One fine-tuning run in ``reproduce``'s ``results.json`` (the fields its summaries use)."""

    study: Name
    dataset: Name
    angle: Finite
    method: Name
    seed: Seed
    variant: Name = "default"
    samples: Count
    eval_samples: Count
    accuracy_before: Fraction
    accuracy_after: Fraction
    finetune_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    cache_bytes: NonNegInt
    diverged: str | None = None
    epoch_losses: list[Finite] = []


class StudyRunRecord(Record):
    """One run of the fixed-point study's ``fixedpoint_runs.json``."""

    dataset: Name
    seed: Seed
    variant: Name
    numerics: Literal["float", "fixed"]
    accuracy_before: Fraction
    accuracy_after: Fraction
    saturating_tensors: list[Name] = []


# --- device bundle ----------------------------------------------------------------------------
class TensorSpec(Record):
    """What the manifest says of one tensor of ``bundle.safetensors``."""

    dtype: Name
    shape: Annotated[list[Dim], Field(max_length=8)]


class BundleFileRecord(Record):
    file: Name
    sha256: Sha256
    bytes: NonNegInt


class CacheSizeRecord(Record):
    row_width: Count
    row_bytes: Count
    rows: Count


class DeviceManifest(Record):
    """``manifest.json`` beside a device bundle (instantft.device.bundle)."""

    format: Name
    package_version: Name | None = None
    method: Name
    storage: Literal["fp32", "nf4"]
    task: SavedTask
    config: SavedConfig
    base_fingerprint: Sha256
    tap_sizes: Annotated[list[Count], Field(max_length=4096)]
    cache: CacheSizeRecord
    steps: NonNegInt
    tensors: dict[Name, TensorSpec]
    bundle: BundleFileRecord | None = None


class BundleAdapterRecord(AdapterRecord):
    """The adapter record a bundle carries for the device to copy: the device adds the hash of
    the tensors it trains, so there is none yet."""

    tensors_sha256: Sha256 | None = None  # type: ignore[assignment]


class BundleMetadata(Record):
    """The string metadata of ``bundle.safetensors`` (numbers as Python's ``repr``)."""

    format: Name
    method: Name
    storage: Literal["fp32", "nf4"]
    lr: Name
    scale: Name
    block_size: Name
    adapter_record: str


def check_bundle(
    metadata: dict[str, str], shapes: dict[str, tuple[str, list[int]]], manifest: dict[str, Any] | None, where: str
) -> None:
    """A device bundle's metadata, embedded adapter record and manifest validated, and the
    manifest's tensor list checked against the tensors actually in the file (``shapes``: name ->
    (dtype, shape), from the safetensors header, before anything is loaded)."""
    meta = validate(BundleMetadata, metadata, f"{where}: bundle metadata")
    for name in ("lr", "scale", "block_size"):
        try:
            value = float(getattr(meta, name))
        except ValueError:
            raise InstantFTError(f"{where}: bundle metadata {name} is not a number") from None
        if not (value > 0 and value < float("inf")):
            raise InstantFTError(f"{where}: bundle metadata {name} must be a finite number > 0, got {value}")
    embedded = f"{where}: adapter_record"
    validate(BundleAdapterRecord, parse_json_object(meta.adapter_record, embedded), embedded)
    if manifest is None:
        return
    m = validate(DeviceManifest, manifest, f"{where}: manifest")
    present = {k: shape for k, (_dtype, shape) in shapes.items()}
    for name, spec in m.tensors.items():
        if name not in present:
            raise InstantFTError(f"{where}: manifest lists tensor {name}, not in the bundle")
        if present[name] != spec.shape:
            raise InstantFTError(f"{where}: tensor {name} has shape {present[name]}, the manifest says {spec.shape}")


# --- parsing and validation -------------------------------------------------------------------
def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_shape(obj: Any, where: str) -> None:
    """Nesting at most MAX_DEPTH and at most MAX_ITEMS per container (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, dict | list):
            if depth > MAX_DEPTH:
                raise InstantFTError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            if len(o) > MAX_ITEMS:
                raise InstantFTError(f"{where}: a list or object has {len(o)} entries (limit {MAX_ITEMS})")
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))


def parse_json(text: str | bytes, where: str, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Parse JSON text bounded in size and depth; ``NaN``/``Infinity`` literals are refused."""
    if len(text) > max_bytes:
        raise InstantFTError(f"{where}: {len(text)} bytes, larger than the {max_bytes}-byte limit")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InstantFTError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, NaN, an int of > 4300 digits
        raise InstantFTError(f"{where}: not valid JSON ({str(exc).splitlines()[0]})") from None
    _check_shape(obj, where)
    return obj


def parse_json_object(text: str | bytes, where: str, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    obj = parse_json(text, where, max_bytes)
    if not isinstance(obj, dict):
        raise InstantFTError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


M = TypeVar("M", bound=Record)


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(record)"
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field {loc}: {err['msg']} (got {got}){more}"


def validate(schema: type[M], data: Any, where: str) -> M:
    """``data`` checked against ``schema``; the first problem is one line naming the field."""
    if not isinstance(data, dict):
        raise InstantFTError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        with strict_settings():
            return schema.model_validate(data)
    except ValidationError as exc:
        raise InstantFTError(f"{where}: {_describe(exc)}") from None


def validate_list(schema: type[M], data: Any, where: str) -> list[M]:
    """Every element of a JSON list checked against ``schema`` (a results file)."""
    if not isinstance(data, list):
        raise InstantFTError(f"{where}: expected a JSON list of runs, got {type(data).__name__}")
    return [validate(schema, item, f"{where}: entry {i}") for i, item in enumerate(data)]


#: the schema of each kind of tensor-file record (``fileio.read_record(kind=...)``)
SCHEMAS: dict[str, type[Record]] = {"checkpoint": CheckpointRecord, "adapter": AdapterRecord}
