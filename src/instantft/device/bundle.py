"""The device bundle: everything ``instantft-device`` needs to fine-tune on a board, in one
``bundle.safetensors`` (tensors + string metadata; the C program reads only this file) and a
``manifest.json`` beside it for people and tools.

Tensors (little-endian, the names the C program looks up):

=====================  =======  ==========================================================
``chain.input``        I32 [3]  model input shape (C, H, W)
``chain.ops``          I32 [n,9] per op: kind, out_c, kh, kw, sh, sw, ph, pw, tap (csrc/instantft.h)
``chain.{i}.weight``   F32      conv (out, in, kh, kw) / linear (out, in), BatchNorm folded in
``chain.{i}.bias``     F32      when the op has one
``skip{k}.A/.B``       F32      the initial adapters, exactly as Python initialises them for the seed
``schedule.order``     I32 [T]  the fine-tuning rows of every step, concatenated (methods.base.schedule)
``schedule.offsets``   I32 [S+1] step s trains on order[offsets[s]:offsets[s+1]]
``schedule.epoch``     I32 [S]  epoch of each step (for the per-epoch losses)
``finetune.images``    U8 [N,C,H,W] and ``finetune.labels`` U8 [N], ``finetune.indices`` I32 [N]
``eval.images``        U8 [M,C,H,W] and ``eval.labels`` U8 [M], ``eval.indices`` I32 [M]
=====================  =======  ==========================================================

Metadata strings: ``format``, ``method``, ``storage`` (fp32 / nf4), ``lr``, ``scale``,
``block_size`` (numbers as Python's ``repr``, so ``strtod`` reads back the same double), and
``adapter_record``: the JSON record ``instantft finetune --save-adapter`` would write for this run
(of the initial adapters, ``tensors_sha256`` last), which the device copies into its
``adapter.safetensors`` with that hash replaced by the hash of the tensors it trained, and
``tensors_sha256_format``: the format of that hash (:func:`instantft.fileio.tensors_sha256`;
absent in bundles of 0.1.0, which the device then hashes in format 1).

Pixels "as uint8": the source files are uint8 and Python trains on ``uint8 / 255``, but the drift
tasks rotate in float (bilinear), so a rotated pixel is not a multiple of 1/255 in general. The
bundle stores the rotated images rounded to the nearest uint8 - what a camera on the device would
deliver - and the manifest records the largest rounding error (in 1/255 units). For multiples of
90° the rotation is a pixel permutation and the error is float round-off (< 0.001/255): the
device sees Python's images. For other angles it is up to 0.5/255; the device's result is then
that of Python on the rounded images, which :func:`reference_fit` reproduces (same bundle, same
adapters), and close to - not equal to - ``finetune`` on the float images.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from instantft.device import BUNDLE_FILE, FORMAT, MANIFEST_FILE, METHODS
from instantft.errors import InstantFTError

if TYPE_CHECKING:
    from instantft.run import Run
    from instantft.settings import Engine, Runtime

OP_FIELDS = ("kind", "out_c", "kh", "kw", "sh", "sw", "ph", "pw", "tap")


@dataclass
class Bundle:
    """The tensors and metadata of ``bundle.safetensors`` and the manifest."""

    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]
    manifest: dict[str, Any]


def to_uint8(images: torch.Tensor) -> tuple[np.ndarray, float]:
    """Images in [0, 1] -> uint8 (round to nearest) and the largest rounding error in 1/255 units."""
    scaled = images.detach().to(torch.float64).mul(255.0)
    rounded = scaled.round().clamp_(0, 255)
    return rounded.to(torch.uint8).numpy(), float((scaled - rounded).abs().max()) if images.numel() else 0.0


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], exactly as the data loaders and the device do (float32 / 255)."""
    return torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)


def _labels_uint8(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    if num_classes > 256 or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes)):
        raise InstantFTError(f"labels must be in 0..{min(num_classes, 256) - 1} to be stored as uint8")
    return labels.to(torch.uint8).numpy()


def schedule_arrays(n: int, config: Any) -> dict[str, np.ndarray]:
    """The exact per-step row order Python uses for this config (methods.base.schedule)."""
    from instantft.methods.base import schedule

    order: list[np.ndarray] = []
    offsets, epochs = [0], []
    for epoch, _step, rows in schedule(n, config):
        order.append(rows.numpy().astype(np.int32))
        offsets.append(offsets[-1] + len(rows))
        epochs.append(epoch)
    return {
        "schedule.order": np.concatenate(order) if order else np.zeros(0, np.int32),
        "schedule.offsets": np.asarray(offsets, dtype=np.int32),
        "schedule.epoch": np.asarray(epochs, dtype=np.int32),
    }


def chain_tensors(backbone: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The frozen backbone as the C core's op chain (:func:`instantft.engine.chain.chain_for`:
    BatchNorm folded, taps on op inputs, checked against the backbone's own trace)."""
    from instantft.engine.chain import chain_for

    chain = chain_for(backbone)
    if chain is None:
        raise InstantFTError(
            "this backbone is not a chain of conv2d/ReLU/max-pool/flatten/linear the device can run "
            "(or the C core is not built: pip install -e .)"
        )
    rows, described = [], []
    tensors: dict[str, np.ndarray] = {"chain.input": np.asarray(chain.in_shape, dtype=np.int32)}
    for i, op in enumerate(chain.ops):
        fields = [op.kind, op.out_c, *op.kernel, *op.stride, *op.padding, op.tap]
        rows.append(fields)
        described.append(dict(zip(OP_FIELDS, (int(f) for f in fields), strict=True)))
        if op.weight is not None:
            tensors[f"chain.{i}.weight"] = np.ascontiguousarray(op.weight, dtype=np.float32)
        if op.bias is not None:
            tensors[f"chain.{i}.bias"] = np.ascontiguousarray(op.bias, dtype=np.float32)
    tensors["chain.ops"] = np.asarray(rows, dtype=np.int32).reshape(-1, len(OP_FIELDS))
    return tensors, described


def adapter_record(method: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """The record ``instantft finetune --save-adapter`` writes for this method and task, made by
    the same code (methods.adapter_io.save_adapter), so the two can never drift apart. It is the
    record of the *initial* adapters (a valid adapter record); ``tensors_sha256`` is moved to the
    end, where the device overwrites its 64 hex digits with the hash of the tensors it trained."""
    from instantft.methods.adapter_io import read_adapter_record, save_adapter

    with tempfile.TemporaryDirectory(prefix="instantft-export-") as tmp:
        path = Path(tmp) / "record.safetensors"
        save_adapter(path, method, {**saved, "numerics": "float"})
        record = read_adapter_record(path)
    digest = record.pop("tensors_sha256")
    return {**record, "tensors_sha256": digest}


def build_bundle(run: Run, runtime: Runtime | None = None) -> Bundle:
    """Everything the device needs for ``instantft finetune`` with the same :class:`Run`: the
    same task, backbone, config and initial adapters (:func:`instantft.run.prepare`)."""
    from instantft import __version__, nf4
    from instantft.methods import create
    from instantft.run import prepare, provenance

    method_name = run.method
    if method_name not in METHODS:
        raise InstantFTError(f"--method must be one of {', '.join(METHODS)} for the device, got {method_name!r}")
    config = run.hyper
    prepared = prepare(run.task, run.source, config, runtime)
    task, meta = prepared.drift, prepared.meta
    method = create(method_name, prepared.backbone, config)
    num_classes = method.backbone.num_classes
    tensors, ops = chain_tensors(method.backbone)
    tensors.update({k: v.detach().numpy().astype(np.float32) for k, v in method.trainable().items()})
    tensors.update(schedule_arrays(len(task.finetune), config))
    errors = {}
    for part, images in (("finetune", task.finetune), ("eval", task.evaluate)):
        tensors[f"{part}.images"], errors[part] = to_uint8(images.images)
        tensors[f"{part}.labels"] = _labels_uint8(images.labels, num_classes)
        tensors[f"{part}.indices"] = images.indices.numpy().astype(np.int32)
    # the record `finetune --save-adapter` writes, so evaluate finds the task
    saved = provenance(run, task)
    task_record = saved["task"]
    record = adapter_record(method, saved)
    storage = METHODS[method_name]
    metadata = {
        "format": FORMAT,
        "method": method_name,
        "storage": storage,
        "lr": repr(float(config.lr)),
        "scale": repr(float(config.scale)),
        "block_size": str(nf4.BLOCK_SIZE),
        "adapter_record": json.dumps(record),
        # which tensors_sha256 the device writes into the record (csrc/device/tensor_hash.h);
        # a bundle without it (0.1.0) gets format 1, as its record says by saying nothing
        "tensors_sha256_format": str(record.get("tensors_sha256_format", 1)),
    }
    sizes = list(method.backbone.sizes)
    width = sum(method.backbone.cache_sizes)
    row_bytes = 4 * width if storage == "fp32" else nf4.nbytes_per_row(width)
    limit = runtime.cache_max_bytes if runtime is not None else None
    if limit is not None and row_bytes * len(task.finetune) > limit:
        raise InstantFTError(
            f"forward cache byte limit exceeded: {len(task.finetune)} entries × {row_bytes} B > {limit} B"
        )
    manifest = {
        "format": FORMAT,
        "package_version": __version__,
        "method": method_name,
        "storage": storage,
        "task": {**task_record, "eval_images": len(task.evaluate)},
        "config": config.to_dict(),
        "base_fingerprint": method.base_fingerprint,
        "checkpoint": {k: meta.get(k) for k in ("architecture", "dataset", "seed", "test_accuracy", "weights_sha256")},
        "chain": ops,
        "tap_sizes": sizes,
        "cache": {"row_width": width, "row_bytes": row_bytes, "rows": len(task.finetune)},
        "steps": len(tensors["schedule.epoch"]),
        "pixels": {
            "stored_as": "uint8, the rotated float images rounded to nearest (x * 255)",
            "max_rounding_error_255ths": errors,
            "lossless": all(e < 0.01 for e in errors.values()),
        },
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()},
    }
    return Bundle(tensors, metadata, manifest)


def write_bundle(out_dir: str | os.PathLike[str], bundle: Bundle) -> Path:
    """bundle.safetensors then manifest.json, each atomically (the manifest names the bundle's sha256)."""
    from safetensors.numpy import save_file

    from instantft.fileio import atomic_write, atomic_write_json, sha256_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InstantFTError(f"{out}: exists and is not a directory")
    path = atomic_write(out / BUNDLE_FILE, lambda tmp: save_file(bundle.tensors, str(tmp), metadata=bundle.metadata))
    about = {"file": BUNDLE_FILE, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {**bundle.manifest, "bundle": about}
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return out


def read_bundle(bundle_dir: str | os.PathLike[str]) -> Bundle:
    """The bundle's tensors and metadata (Python side: tests and the reference run)."""
    from safetensors import SafetensorError, safe_open

    d = Path(bundle_dir)
    path = d / BUNDLE_FILE
    if not path.is_file():
        raise InstantFTError(f"{path}: no device bundle here (run instantft export)")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InstantFTError(f"{path}: not a valid bundle ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise InstantFTError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT}")
    from instantft.fileio import tensor_shapes
    from instantft.records import check_bundle, parse_json

    manifest_path = d / MANIFEST_FILE
    manifest = parse_json(manifest_path.read_bytes(), str(manifest_path), 1 << 24) if manifest_path.is_file() else {}
    check_bundle(metadata, tensor_shapes(path, "bundle"), manifest or None, str(d))  # schemas: instantft.records
    return Bundle(tensors, metadata, manifest)


def reference_fit(
    bundle_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None, engine: Engine = "reference"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the bundle's task in Python - the reference loop, or another ``engine`` - on the
    bundle's own images (the same uint8 pixels the device reads): the adapters
    ``instantft-device`` must reproduce. Returns the trained tensors and a summary (accuracies
    before and after on the bundle's evaluation set)."""
    from instantft.data import ImageSet
    from instantft.methods import create
    from instantft.models import accuracy
    from instantft.run import load_backbone
    from instantft.settings import FineTuneConfig, Runtime

    b = read_bundle(bundle_dir)
    record = json.loads(b.metadata["adapter_record"])
    config = FineTuneConfig.load_record(record["config"], f"{bundle_dir}: adapter config")
    model, _ = load_backbone(record["task"]["dataset"], checkpoint)
    method = create(b.metadata["method"], model, config, runtime=Runtime(engine=engine))
    if method.base_fingerprint != record["base_fingerprint"]:
        raise InstantFTError(f"{bundle_dir}: bundle was exported from another base model")
    for k, v in method.trainable().items():
        if not np.array_equal(v.numpy(), b.tensors[k]):
            raise InstantFTError(f"{bundle_dir}: {k} is not the initial adapter of seed {config.adapter_seed}")

    def imageset(part: str) -> ImageSet:
        t = b.tensors
        return ImageSet(
            f"bundle-{part}",
            from_uint8(t[f"{part}.images"]),
            torch.from_numpy(t[f"{part}.labels"].astype(np.int64)),
            torch.from_numpy(t[f"{part}.indices"].astype(np.int64)),
        )

    ft, ev = imageset("finetune"), imageset("eval")
    expected = schedule_arrays(len(ft), config)
    if any(not np.array_equal(expected[k], b.tensors[k]) for k in expected):
        raise InstantFTError(f"{bundle_dir}: the bundle's schedule is not Python's for seed {config.seed}")
    before = accuracy(method.logits(ev.images), ev.labels)
    fit = method.fit(ft)
    logits = method.logits(ev.images)
    summary = {
        "accuracy_before": before,
        "accuracy_after": accuracy(logits, ev.labels),
        "correct_after": int((logits.argmax(1) == ev.labels).sum()),
        "steps": fit.steps,
        "cache_bytes": fit.cache_bytes,
        "epoch_losses": fit.epoch_losses,
    }
    return {k: v.clone() for k, v in method.trainable().items()}, summary
