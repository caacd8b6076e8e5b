"""Adapter files: the tensors a method trained, as ``.safetensors`` with a JSON record in the
header (method, config, shapes, the SHA-256 of the tensors, and the fingerprint of the base
checkpoint they belong to). Written atomically, never with a non-finite tensor. On load the
record is validated (:class:`instantft.records.AdapterRecord`), its sizes are checked against
the tensors actually in the file before anything is allocated, and the tensors must be finite
and match their recorded hash; an adapter made for another base model is refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instantft.backbones import Backbone, exact_taps
from instantft.errors import InstantFTError
from instantft.fileio import (
    TENSORS_SHA256_FORMAT,
    PathLike,
    load_tensors,
    read_record,
    save_with_record,
    tensor_shapes,
    tensors_sha256,
)
from instantft.fixedpoint.formats import FixedPointConfig
from instantft.methods.base import FineTuneConfig, Method, create
from instantft.models import model_fingerprint

META_KEY = "instantft_adapter"
#: a claimed rank must appear as a dimension of some tensor in the file (every LoRA-style
#: adapter holds an r x d matrix), unless it is at most this (methods whose size does not
#: depend on the rank: none, ft-*)
RANK_FLOOR = 64


def save_adapter(
    path: str | os.PathLike[str],
    method: Method,
    extra: dict[str, Any] | None = None,
    inputs: tuple[PathLike | None, ...] = (),
) -> Path:
    """Write ``method``'s trained tensors; ``inputs`` are the run's input files (never replaced)."""
    state = {k: v.detach().contiguous().clone() for k, v in method.trainable().items()}
    record = {
        "method": method.name,
        "config": method.config.to_dict(),
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "base_fingerprint": method.base_fingerprint,
        "architecture": getattr(getattr(method.base, "config", None), "name", None),
        "backbone": type(method.base).__name__,
        "taps": [t.label for t in method.backbone.taps],
        "input_shape": list(method.backbone.input_shape),
        **(extra or {}),
        "tensors_sha256_format": TENSORS_SHA256_FORMAT,
        "tensors_sha256": tensors_sha256(state),
    }
    return save_with_record(path, state, META_KEY, record, inputs)


def read_adapter_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON record of an adapter file, validated, without loading its tensors."""
    return read_record(path, META_KEY, "adapter")


Base = Backbone | nn.Module


def _rebuild(record: dict[str, Any], base: Base, config: FineTuneConfig, fixed: FixedPointConfig | None = None
             ) -> Method:  # fmt: skip
    """The method of ``record`` on ``base`` with the recorded taps (``auto`` for old records)."""
    taps, shape = record.get("taps"), record.get("input_shape")
    spec = exact_taps(taps) if taps else "auto"  # the recorded taps exactly, whatever base's own are
    return create(record["method"], base, config, spec, tuple(shape) if shape else None, fixed=fixed)


def check_sizes(path: PathLike, record: dict[str, Any], config: FineTuneConfig) -> None:
    """The sizes the record claims against the tensors in the file's header, before the method
    is built: the recorded shapes must be the header's, and the rank - what the method's
    allocation grows with - must be one the tensors present actually have. The exact fit of
    every tensor is checked when they are loaded into the method (``load_trainable``)."""
    present = {k: shape for k, (_dtype, shape) in tensor_shapes(path, "adapter").items()}
    if record["shapes"] != present:
        raise InstantFTError(f"{path}: adapter record's shapes do not match the tensors in the file")
    largest = max((d for shape in present.values() for d in shape), default=0)
    if config.rank > max(RANK_FLOOR, largest):
        raise InstantFTError(
            f"{path}: adapter claims rank {config.rank} but no tensor in the file has a dimension that large"
        )
    for name, shape in present.items():
        a_bad = name.endswith(".A") and shape[:1] != [config.rank]
        if a_bad or (name.endswith(".B") and shape[-1:] != [config.rank]):
            raise InstantFTError(f"{path}: adapter tensor {name} has shape {shape}, not rank {config.rank}")


def load_adapter(path: str | os.PathLike[str], base: Base) -> tuple[Method, dict[str, Any]]:
    """Rebuild the method on ``base`` (in the numerics it was trained in) and load its tensors."""
    record = read_adapter_record(path)
    config = FineTuneConfig.load_record(record["config"], f"{path}: adapter config")
    model = base.model if isinstance(base, Backbone) else base
    if record["base_fingerprint"] != model_fingerprint(model):
        raise InstantFTError(f"{path}: adapter was trained on another base model (fingerprint mismatch)")
    check_sizes(path, record, config)
    state = load_tensors(path, "adapter")
    fmt = record.get("tensors_sha256_format", 1)  # absent: written by 0.1.0
    if fmt not in (1, TENSORS_SHA256_FORMAT) or isinstance(fmt, bool):
        raise InstantFTError(f"{path}: unknown tensors_sha256_format {fmt!r}; this version reads 1 and 2")
    if tensors_sha256(state, fmt) != record["tensors_sha256"]:
        raise InstantFTError(f"{path}: adapter tensors do not match their recorded sha256 (file corrupt)")
    if record.get("numerics", "float") == "fixed":
        from instantft.fixedpoint import FixedPointConfig
        fixed = FixedPointConfig.load(record.get("fixed") or {}, f"{path}: adapter fixed-point config")
        method: Method = _rebuild(record, base, config, fixed)
    else:
        method = _rebuild(record, base, config)
    method.load_trainable({k: v.to(torch.float32) for k, v in state.items()})
    return method, record
