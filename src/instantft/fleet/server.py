"""The server side: a Flower ``ServerApp`` and :class:`AdapterStrategy`, FedAvg's round loop with
an aggregation made for low-rank adapters (:mod:`instantft.fleet.aggregate`).

Each round the strategy sends the global adapters and the fleet's settings to every device,
waits up to ``timeout`` seconds, then, from the replies that came back:

1. leaves out a device that failed (its ClientApp raised) or did not answer in time;
2. refuses an update holding NaN or infinity, or of another shape, and clips an update farther
   from the global adapters than ``clip`` × the round's median distance;
3. aggregates what is left by sample count (fedavg, svd or b-only).

Every device left out, refused or clipped is named in the log (its partition id and node id),
so nothing non-finite ever reaches the global adapters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from instantft.fleet.aggregate import Aggregation, Update, aggregate, screen
from instantft.fleet.client import as_record, as_tensors, number
from instantft.fleet.config import Fleet, decode, encode
from instantft.methods import create
from instantft.models import bundled_checkpoint, load_checkpoint
from instantft.settings import FineTuneConfig


def reason(reply: Message) -> str:
    """The last line of a failed reply's error (the exception, not the traceback), at most 200 characters."""
    lines = [ln.strip() for ln in str(reply.error.reason).splitlines() if ln.strip()]
    last = lines[-1] if lines else "unknown error"
    return (last[:197] + "...") if len(last) > 200 else last


class AdapterStrategy(FedAvg):
    """FedAvg's sampling and round loop; :meth:`aggregate_train` screens, clips and merges adapters."""

    def __init__(self, aggregation: Aggregation, nodes: int, clip: float = 5.0) -> None:
        super().__init__(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
        self.aggregation, self.clip = aggregation, clip
        self.global_arrays: dict[str, torch.Tensor] = {}
        self.sent: set[int] = set()
        self.device_of: dict[int, int] = {}  # node id -> partition id, from the replies
        self.history: list[dict[str, Any]] = []
        self._round_start = 0.0

    def summary(self) -> None:
        log(INFO, "\t├──> AdapterStrategy: aggregation %s, clip %s × median distance", self.aggregation, self.clip)
        super().summary()

    def name(self, node: int) -> str:
        device = self.device_of.get(node)
        return f"device {device} (node {node})" if device is not None else f"node {node}"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:  # fmt: skip
        self._round_start = time.perf_counter()
        self.global_arrays = as_tensors(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sent = {m.metadata.dst_node_id for m in messages}
        self.history.append({"round": server_round, "down-bytes": int(arrays.count_bytes()), "devices": len(messages)})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:  # fmt: skip
        replies = list(replies)
        row = self.history[-1]
        answered = {m.metadata.src_node_id for m in replies}
        failed: dict[str, str] = {}
        for node in sorted(self.sent - answered):
            failed[self.name(node)] = "no reply in time"
            log(WARNING, "round %d: %s sent no reply in time; left out", server_round, self.name(node))
        updates, metrics = [], []
        for m in replies:
            node = m.metadata.src_node_id
            if m.has_error():
                failed[self.name(node)] = reason(m)
                log(WARNING, "round %d: %s failed (%s); left out", server_round, self.name(node), reason(m))
                continue
            mr = m.content.metric_records["metrics"]
            self.device_of[node] = int(number(mr, "partition-id"))
            metrics.append(mr)
            updates.append(
                Update(self.name(node), as_tensors(m.content.array_records["arrays"]), int(number(mr, "num-examples")))
            )
        screened = screen(updates, self.global_arrays, self.clip)
        for who, why in screened.refused.items():
            log(WARNING, "round %d: update of %s refused: %s", server_round, who, why)
        for who, s in screened.clipped.items():
            log(WARNING, "round %d: update of %s clipped (scaled by %.3g) to %s × the median distance",
                server_round, who, s, self.clip)  # fmt: skip
        row.update({"failed": failed, "refused": screened.refused, "clipped": screened.clipped,
                    "aggregated": [u.client for u in screened.kept]})  # fmt: skip
        if metrics:
            row["up-bytes"] = [int(number(mr, "bytes-sent")) for mr in metrics]
            row["fit-seconds"] = [number(mr, "fit-seconds") for mr in metrics]
            row["train-loss"] = [number(mr, "train-loss") for mr in metrics]
            row["cache-reused"] = sum(int(number(mr, "cache-reused")) for mr in metrics)
        if not screened.kept:
            log(WARNING, "round %d: no update to aggregate; the global adapters stay as they were", server_round)
            row["seconds"] = time.perf_counter() - self._round_start
            return None, None
        merged = aggregate(screened.kept, self.aggregation)
        assert all(bool(torch.isfinite(t).all()) for t in merged.values())
        row["seconds"] = time.perf_counter() - self._round_start
        total = sum(u.samples for u in screened.kept)
        loss = sum(u.samples * number(mr, "train-loss") for u, mr in zip(updates, metrics, strict=True)
                   if u.client in row["aggregated"]) / total  # fmt: skip
        return as_record(merged), MetricRecord({"train-loss": loss, "num-examples": total})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        accuracy: dict[int, float] = {}
        for m in replies:
            if m.has_error():
                log(WARNING, "round %d: evaluation on %s failed (%s)", server_round,
                    self.name(m.metadata.src_node_id), reason(m))  # fmt: skip
                continue
            mr = m.content.metric_records["metrics"]
            accuracy[int(number(mr, "partition-id"))] = number(mr, "accuracy")
        if self.history:
            self.history[-1]["accuracy"] = {str(k): v for k, v in sorted(accuracy.items())}
        if not accuracy:
            return None
        return MetricRecord({"accuracy": sum(accuracy.values()) / len(accuracy)})


def initial_adapters(fleet: Fleet, finetune: FineTuneConfig) -> ArrayRecord:
    """The adapters every device starts from: the method's own init (B = 0) from the fleet's seed."""
    net, _ = load_checkpoint(bundled_checkpoint(fleet.base_dataset))
    return as_record(create(fleet.method, net, fleet.finetune_config(finetune)).trainable())


def make_server_app(fleet: Fleet | None = None, finetune: FineTuneConfig | None = None, nodes: int | None = None,
                    out: Path | None = None) -> ServerApp:  # fmt: skip
    """The ServerApp. Settings given here win; otherwise they come from the run config (``fleet`` and
    ``finetune`` as JSON, ``nodes``, ``out``: where the round history is written as JSON)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        fl, ft = (fleet, finetune) if fleet is not None and finetune is not None else decode(rc)
        n = nodes if nodes is not None else int(rc.get("nodes", 2))
        path = out if out is not None else (Path(str(rc["out"])) if rc.get("out") else None)
        strategy = AdapterStrategy(fl.aggregation, n, fl.clip)
        config = ConfigRecord(dict(encode(fl, ft)))
        start = time.perf_counter()
        result = strategy.start(grid, initial_adapters(fl, ft), num_rounds=fl.rounds, timeout=fl.timeout,
                                train_config=config, evaluate_config=ConfigRecord(dict(encode(fl, ft))))  # fmt: skip
        if path is not None:
            final = {k: v.tolist() for k, v in as_tensors(result.arrays).items()} if result.arrays else {}
            seconds = time.perf_counter() - start
            report = {"fleet": fl.to_dict(), "finetune": ft.to_dict(), "nodes": n, "seconds": seconds,
                      "rounds": strategy.history, "final": final}  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report))

    return app


#: the app a SuperLink runs (``instantft.fleet.server:app``), settings from the run config
app = make_server_app()
