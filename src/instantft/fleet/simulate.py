"""Flower's simulation engine: ``nodes`` virtual devices on this machine (Ray backend), each a
ClientApp of :mod:`instantft.fleet.client`, one torch thread per device."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instantft.fleet.config import Fleet
from instantft.settings import FineTuneConfig, max_threads


def simulate(fleet: Fleet, finetune: FineTuneConfig, nodes: int, *, faults: Mapping[int, str] | None = None,
             hang_seconds: float = 60.0, cpus: int | None = None, verbose: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run the fleet in the simulation engine and return the server's round history (see
    :func:`instantft.fleet.server.make_server_app`). ``cpus``: devices training at once (default: every CPU)."""
    from flwr.simulation import run_simulation

    from instantft.fleet.client import make_client_app
    from instantft.fleet.server import make_server_app

    cpus = cpus or max_threads()
    with tempfile.TemporaryDirectory(prefix="instantft-fleet-") as tmp:
        out = Path(tmp) / "history.json"
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                                 "logging_level": logging.WARNING, "log_to_driver": verbose}}  # fmt: skip
        run_simulation(
            server_app=make_server_app(fleet, finetune, nodes, out),
            client_app=make_client_app(faults, hang_seconds),
            num_supernodes=nodes,
            backend_name="ray",
            backend_config=backend,  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
        if not out.is_file():
            raise RuntimeError("the simulation ended without the server's history (see the log above)")
        return dict(json.loads(out.read_text()))
