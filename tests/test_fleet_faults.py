"""Bad devices: one crashes mid-round, one does not answer in time, one sends non-finite
adapters, one an update 10⁶ times the others'. The round completes with the rest, the bad update
is refused or clipped, nothing non-finite reaches the global adapters, and the log names the device."""

from __future__ import annotations

import logging
import math

import pytest

from instantft.fleet.config import Fleet
from instantft.fleet.simulate import simulate
from instantft.settings import FineTuneConfig

NODES = 4
BAD = 2  # the misbehaving device's partition id


def _run(fault: str, caplog: pytest.LogCaptureFixture, **fleet: float) -> dict:
    settings = Fleet(rounds=1, samples=64, eval_samples=100, aggregation="fedavg", **fleet)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        history = simulate(settings, FineTuneConfig(epochs=1), nodes=NODES, faults={BAD: fault}, hang_seconds=120,
                           cpus=2)  # fmt: skip
    final = history["final"]
    assert final and all(math.isfinite(x) for t in final.values() for row in t for x in row)
    return history["rounds"][0]


def _logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(all(w in rec.getMessage() for w in words) for rec in caplog.records)


def test_fleet_device_that_crashes_is_left_out(caplog):
    r = _run("crash", caplog)
    assert len(r["aggregated"]) == NODES - 1 and len(r["failed"]) == 1
    assert _logged(caplog, "failed", "crashed mid-round")


def test_fleet_device_that_times_out_is_left_out(caplog):
    r = _run("hang", caplog, timeout=25.0)
    assert len(r["aggregated"]) == NODES - 1
    assert list(r["failed"].values()) == ["no reply in time"]
    assert _logged(caplog, "sent no reply in time")


def test_fleet_non_finite_update_is_refused(caplog):
    r = _run("nan", caplog)

    (who,) = r["refused"]
    assert who.startswith(f"device {BAD} (node ")
    assert len(r["aggregated"]) == NODES - 1
    assert _logged(caplog, f"device {BAD} (node", "refused", "non-finite")


def test_fleet_huge_update_is_clipped(caplog):
    r = _run("huge", caplog)
    (who,) = r["clipped"]
    assert who.startswith(f"device {BAD} (node ") and r["clipped"][who] < 1e-4
    assert len(r["aggregated"]) == NODES
    assert _logged(caplog, f"device {BAD} (node", "clipped")
