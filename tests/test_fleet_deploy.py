"""Flower's deployment engine on loopback: one SuperLink and three SuperNodes as separate
processes, two rounds, everything stopped and reaped afterwards (and on failure)."""

from __future__ import annotations

import math
import os
import subprocess

import pytest

from instantft.errors import InstantFTError
from instantft.fleet import deploy as deploy_module
from instantft.fleet.config import Fleet
from instantft.fleet.deploy import deploy
from instantft.settings import FineTuneConfig


def _using(address: str) -> list[int]:
    """Live processes whose command line names ``address`` (a SuperExec the nodes started, say)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if address.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every process the deployment starts (to check that each was reaped)."""
    procs: list[subprocess.Popen[bytes]] = []
    start = deploy_module.Processes.start

    def spy(self, name, args):  # type: ignore[no-untyped-def]
        proc, log = start(self, name, args)
        procs.append(proc)
        return proc, log

    monkeypatch.setattr(deploy_module.Processes, "start", spy)
    return procs


def test_fleet_deploy_three_supernodes_two_rounds(tmp_path, started):
    fleet = Fleet(rounds=2, samples=64, eval_samples=100, timeout=120)
    history = deploy(fleet, FineTuneConfig(epochs=1), nodes=3, deadline=240, workdir=tmp_path)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert len(r["aggregated"]) == 3 and not r["failed"]
        assert sorted(r["accuracy"]) == ["0", "1", "2"] and all(math.isfinite(a) for a in r["accuracy"].values())
    assert rounds[1]["cache-reused"] == 3  # the Forward Cache survived in each SuperNode's Context
    assert len(started) == 4  # a SuperLink and three SuperNodes, each its own process
    assert all(p.returncode is not None and not _alive(p.pid) for p in started)
    config = (tmp_path / "flwr-home" / "config.toml").read_text()
    address = config.split('address = "')[1].split('"')[0]
    assert address.startswith("127.0.0.1:")
    assert _using(address) == []  # nothing that spoke to the SuperLink outlives the run


def test_fleet_deploy_reaps_everything_on_failure(tmp_path, started, monkeypatch):
    """A run that cannot finish (the ServerApp cannot be found) hits the deadline: every process stopped."""
    monkeypatch.setattr(deploy_module, "write_app", _broken_app(deploy_module.write_app))
    with pytest.raises(InstantFTError):
        deploy(Fleet(rounds=1, samples=32, eval_samples=50), FineTuneConfig(epochs=1), nodes=2, deadline=25,
               workdir=tmp_path)  # fmt: skip
    assert len(started) >= 1
    assert all(p.returncode is not None and not _alive(p.pid) for p in started)


def _broken_app(write_app):  # type: ignore[no-untyped-def]
    def write(folder, run_config):  # type: ignore[no-untyped-def]
        path = write_app(folder, run_config)
        text = (
            (path / "pyproject.toml").read_text().replace("instantft.fleet.server:app", "instantft.fleet.nowhere:app")
        )
        (path / "pyproject.toml").write_text(text)
        return path

    return write
