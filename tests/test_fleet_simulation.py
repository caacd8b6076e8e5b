"""Flower's simulation engine (Ray backend): 20 virtual devices, two rounds."""

from __future__ import annotations

import math

from instantft.fleet.config import Fleet
from instantft.fleet.simulate import simulate
from instantft.settings import FineTuneConfig


def test_fleet_simulation_twenty_devices_two_rounds():
    fleet = Fleet(rounds=2, samples=64, eval_samples=100, aggregation="b-only", timeout=300)
    history = simulate(fleet, FineTuneConfig(epochs=2, rank=16), nodes=20, cpus=2)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert len(r["aggregated"]) == 20 and not r["failed"] and not r["refused"]
        assert len(r["accuracy"]) == 20 and all(math.isfinite(a) for a in r["accuracy"].values())
        # b-only: only B goes up, 5 taps x 10 classes x rank 16 float32 values (+ headers)
        assert all(4 * 5 * 10 * 16 <= b < 2 * 4 * 5 * 10 * 16 for b in r["up-bytes"])
    # the second round reuses every device's Forward Cache from its Context
    assert rounds[0]["cache-reused"] == 0 and rounds[1]["cache-reused"] == 20
    assert all(math.isfinite(x) for t in history["final"].values() for row in t for x in row)
