"""Backbone checkpoints: one ``.safetensors`` file whose header metadata holds a JSON record
(architecture, dataset, samples, seed, epochs, lr, test accuracy, package version, sha256 of the
weights). Written atomically; loading checks the hash and the architecture. Never pickle."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instantft.digest import cached_digest
from instantft.errors import InstantFTError
from instantft.fileio import load_tensors, read_record, save_with_record
from instantft.models.zoo import ARCHITECTURES, build, bundled_name

META_KEY = "instantft"
BUNDLED_WEIGHTS = Path(__file__).parent / "weights"


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights alone (names, shapes, bytes in sorted order): the model's identity,
    used to fingerprint adapters and the Forward Cache; hashed once while the tensors are
    unchanged (:mod:`instantft.digest`)."""
    names = sorted(state)

    def compute() -> str:
        h = hashlib.sha256()
        for name in names:
            t = state[name].detach().contiguous().cpu()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    return cached_digest("weights:" + ";".join(names), [state[n] for n in names], compute)


def model_fingerprint(model: torch.nn.Module) -> str:
    return weights_sha256(model.state_dict(keep_vars=True))


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    """Save an in-tree model (its ``config.name`` is the architecture recorded)."""
    from instantft import __version__

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    record = {
        "architecture": model.config.name,  # type: ignore[union-attr]
        **meta,
        "package_version": __version__,
        "weights_sha256": weights_sha256(state),
    }
    return save_with_record(path, state, META_KEY, record)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON record, without loading its weights."""
    return read_record(path, META_KEY, "checkpoint")


def load_checkpoint(
    path: str | os.PathLike[str], expect_arch: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a backbone; a corrupt file, a hash mismatch or another architecture is an error."""
    path = Path(path)
    meta = read_metadata(path)
    arch = meta.get("architecture")
    if arch not in ARCHITECTURES:
        raise InstantFTError(f"{path}: unknown architecture {arch!r}")
    if expect_arch is not None and arch != expect_arch:
        raise InstantFTError(f"{path}: checkpoint is for {arch}, this task needs {expect_arch}")
    state = load_tensors(path)
    if weights_sha256(state) != meta.get("weights_sha256"):
        raise InstantFTError(f"{path}: weights do not match their recorded sha256 (file corrupt)")
    model = build(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InstantFTError(f"{path}: weights do not fit {arch} ({first})") from None
    model.eval()
    return model, meta


def bundled_checkpoint(dataset: str, family: str = "lenet5") -> Path:
    """The checkpoint of ``family`` (lenet5, mlp, resnet8) shipped pre-trained on ``mnist`` or ``fmnist``."""
    path = BUNDLED_WEIGHTS / bundled_name(family, dataset)
    if not path.is_file():
        raise InstantFTError(
            f"no bundled checkpoint for {dataset!r} ({path.name}); run `instantft pretrain --dataset {dataset}` "
            "and pass --checkpoint"
        )
    return path
