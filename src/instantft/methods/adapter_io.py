"""Adapter files: the tensors a method trained, as ``.safetensors`` with a JSON record in the
header (method, config, shapes, and the fingerprint of the base checkpoint they belong to).
Written atomically; an adapter made for another base model is refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from instantft.errors import InstantFTError
from instantft.fileio import load_tensors, read_record, save_with_record
from instantft.methods.base import FineTuneConfig, Method, create
from instantft.models import LeNet5, model_fingerprint

META_KEY = "instantft_adapter"


def save_adapter(path: str | os.PathLike[str], method: Method, extra: dict[str, Any] | None = None) -> Path:
    state = {k: v.detach().contiguous().clone() for k, v in method.trainable().items()}
    record = {
        "method": method.name,
        "config": method.config.to_dict(),
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "base_fingerprint": method.base_fingerprint,
        "architecture": method.base.config.name,
        **(extra or {}),
    }
    return save_with_record(path, state, META_KEY, record)


def read_adapter_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON record of an adapter file, without loading its tensors."""
    return read_record(path, META_KEY, "adapter")


def load_adapter(path: str | os.PathLike[str], base: LeNet5) -> tuple[Method, dict[str, Any]]:
    """Rebuild the method on ``base`` (in the numerics it was trained in) and load its tensors."""
    record = read_adapter_record(path)
    state = load_tensors(path)
    try:
        method_name, config = record["method"], FineTuneConfig(**record["config"])
    except (KeyError, TypeError) as exc:
        raise InstantFTError(f"{path}: adapter metadata is malformed ({type(exc).__name__}: {exc})") from None
    if record.get("base_fingerprint") != model_fingerprint(base):
        raise InstantFTError(f"{path}: adapter was trained on another base model (fingerprint mismatch)")
    if record.get("numerics", "float") == "fixed":
        from instantft.fixedpoint import numerics_config
        from instantft.fixedpoint.trainer import fixed_point_method

        fixed = numerics_config("fixed", **record.get("fixed", {}))
        method: Method = fixed_point_method(method_name, base, config, fixed, "fixed")
    else:
        method = create(method_name, base, config)
    method.load_trainable({k: v.to(torch.float32) for k, v in state.items()})
    return method, record
