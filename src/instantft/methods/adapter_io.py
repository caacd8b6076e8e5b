"""Adapter files: the tensors a method trained, as ``.safetensors`` with a JSON record in the
header (method, config, shapes, and the fingerprint of the base checkpoint they belong to).
Written atomically; an adapter made for another base model is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from instantft.errors import InstantFTError
from instantft.fileio import atomic_write
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
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={META_KEY: json.dumps(record)}))


def read_adapter_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON record of an adapter file, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise InstantFTError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return dict(json.loads(meta[META_KEY]))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InstantFTError(f"{path}: not a valid safetensors file ({exc})") from None
    except KeyError:
        raise InstantFTError(f"{path}: not an instantft adapter file") from None


def load_adapter(path: str | os.PathLike[str], base: LeNet5) -> tuple[Method, dict[str, Any]]:
    """Rebuild the method on ``base`` (in the numerics it was trained in) and load its tensors."""
    path = Path(path)
    if not path.is_file():
        raise InstantFTError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InstantFTError(f"{path}: not a valid safetensors file ({exc})") from None
    if META_KEY not in meta:
        raise InstantFTError(f"{path}: not an instantft adapter file")
    try:
        record = json.loads(meta[META_KEY])
        method_name, config = record["method"], FineTuneConfig(**record["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
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
