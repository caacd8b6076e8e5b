"""The device side: a Flower ``ClientApp`` whose training step is an instantft fit on the
device's own data, starting from the global adapters the server sent.

A skip method with a Forward Cache (skip2-lora, instantft) keeps the cache in the node's
``Context.state`` between rounds, with the fingerprint it was filled from (the base network's
weights and tap layout, and the data): the next round reuses it only when the fingerprint still
matches, so the frozen network runs once per sample for the whole federation, not once a round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from instantft import nf4
from instantft.cache import CacheSource, ForwardCache
from instantft.fleet.config import decode, device_data
from instantft.methods import Method, create
from instantft.models import accuracy, bundled_checkpoint, load_checkpoint
from instantft.settings import Runtime

CACHE_ARRAYS = "instantft.cache"
CACHE_META = "instantft.cache-source"
#: what a misbehaving device does, for the fault drills (tests/test_fleet_faults.py)
FAULTS = ("crash", "hang", "nan", "huge")


def number(record: Any, key: str) -> float:
    """A numeric value of a MetricRecord or ConfigRecord (typed loosely by Flower)."""
    value = record[key]
    if not isinstance(value, int | float):
        raise TypeError(f"{key} is {type(value).__name__}, not a number")
    return float(value)


def as_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v.numpy(), dtype=np.float32)) for k, v in record.items()}


def as_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().contiguous().numpy()) for k, v in tensors.items()})


# --- the Forward Cache in Context.state -------------------------------------------------------
def save_cache(state: RecordDict, cache: ForwardCache) -> None:
    """Keep ``cache`` (its keys, NF4 codes and scales or fp32 rows, and its source) in ``state``."""
    if cache.source is None or not len(cache):
        return
    keys = cache.keys()
    slots = cache.slots(keys)
    arrays: dict[str, np.ndarray] = {"keys": keys.numpy()}
    if cache.storage == "fp32":
        arrays["rows"] = cache.rows[slots].numpy()
    else:
        arrays["codes"], arrays["absmax"] = cache.codes[slots].numpy(), cache.absmax[slots].numpy()
    state[CACHE_ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    state[CACHE_META] = ConfigRecord({"model": cache.source.model, "dataset": cache.source.dataset,
                                      "storage": cache.storage, "sizes": json.dumps(cache.sizes),
                                      "block-size": int(cache.block_size)})  # fmt: skip


def restore_cache(state: RecordDict, method: Method, source: CacheSource) -> tuple[ForwardCache | None, str]:
    """The cache kept in ``state`` when it was filled from ``source`` (and has the method's
    layout), else None; the second value says which and why."""
    if CACHE_META not in state.config_records or CACHE_ARRAYS not in state.array_records:
        return None, "none kept"
    meta = state.config_records[CACHE_META]
    if (str(meta["model"]), str(meta["dataset"])) != (source.model, source.dataset):
        return None, "stale: filled from another base or other data"
    if meta["storage"] != method.cache_storage or json.loads(str(meta["sizes"])) != method.backbone.cache_sizes:
        return None, "stale: another storage or tap layout"
    arrays = {k: torch.from_numpy(np.array(v.numpy())) for k, v in state.array_records[CACHE_ARRAYS].items()}
    keys = arrays["keys"]
    cache = method.new_cache(len(keys))
    cache.bind(source)
    if cache.storage == "fp32":
        rows = arrays["rows"]
    else:  # decoded then put again: NF4 codes of NF4 values are the same codes
        rows = nf4.dequantize(
            nf4.NF4Tensor(arrays["codes"], arrays["absmax"], cache.width, int(number(meta, "block-size")))
        )
    cache.put(keys, rows)
    return cache, f"reused ({len(keys)} rows, {cache.nbytes:,} B)"


# --- one device -------------------------------------------------------------------------------
def _device(context: Context) -> tuple[int, int]:
    cfg = context.node_config
    return int(cfg.get("partition-id", 0)), int(cfg.get("num-partitions", 1))


def _fault(context: Context, faults: Mapping[int, str]) -> str:
    device, _ = _device(context)
    return str(context.node_config.get("fault", faults.get(device, "")))


def _method(content: RecordDict, context: Context) -> tuple[Method, Any, Any, Any]:
    fleet, finetune = decode(content["config"])
    device, devices = _device(context)
    train, held_out = device_data(fleet, device, devices)
    net, _ = load_checkpoint(bundled_checkpoint(fleet.base_dataset))
    server_round = int(number(content["config"], "server-round"))
    # the batch order differs per device and round; the adapter init (init_seed) is the fleet's
    finetune = fleet.finetune_config(finetune).replace(
        seed=(finetune.seed * 1_000_003 + server_round * 1009 + device) % 2**62
    )
    method = create(fleet.method, net, finetune, runtime=Runtime(threads=1))
    method.load_trainable(as_tensors(content.array_records["arrays"]))
    return method, train, held_out, fleet


def make_client_app(faults: Mapping[int, str] | None = None, hang_seconds: float = 60.0) -> ClientApp:
    """The ClientApp. ``faults`` maps a device (partition id) to a fault of :data:`FAULTS`, for the
    drills; in a deployment a SuperNode started with ``--node-config "fault='nan'"`` does the same."""
    faults = dict(faults or {})
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fault = _fault(context, faults)
        if fault == "crash":
            raise RuntimeError("fault drill: this device crashed mid-round")
        method, data, _, _ = _method(msg.content, context)
        start = global_ = dict(as_tensors(msg.content.array_records["arrays"]))
        reused = "not a cached method"
        if method.cache_storage is not None:
            method.cache, reused = restore_cache(context.state, method, method.cache_source(data))
        method.drop_stale_cache(data)
        result = method.fit(data)
        if method.cache is not None:
            save_cache(context.state, method.cache)
        trained = {k: v.detach().clone() for k, v in method.trainable().items()}
        if fault == "hang":
            time.sleep(hang_seconds)
        elif fault == "nan":
            trained = {k: torch.full_like(v, float("nan")) for k, v in trained.items()}
        elif fault == "huge":
            trained = {k: start[k] + 1e6 * (v - global_[k]) for k, v in trained.items()}
        arrays = as_record(trained)
        device, _ = _device(context)
        metrics = MetricRecord({
            "num-examples": len(data), "partition-id": device, "train-loss": float(result.epoch_losses[-1]),
            "fit-seconds": float(result.seconds), "bytes-sent": int(arrays.count_bytes()),
            "cache-bytes": int(method.cache.nbytes if method.cache is not None else 0),
            "cache-reused": int(reused.startswith("reused")),
        })  # fmt: skip
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        if _fault(context, faults) in ("crash", "hang"):
            raise RuntimeError("fault drill: this device is down")
        method, _, held_out, _ = _method(msg.content, context)
        acc = accuracy(method.logits(held_out.images), held_out.labels)
        device, _ = _device(context)
        metrics = MetricRecord({"num-examples": len(held_out), "partition-id": device, "accuracy": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


#: the app a SuperNode runs (``instantft.fleet.client:app``)
app = make_client_app()
