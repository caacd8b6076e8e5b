"""Flower's deployment engine on this machine: one SuperLink and ``nodes`` SuperNodes, each a
separate process, on 127.0.0.1 ports chosen free at run time; the app is submitted with
``flwr run`` and everything is stopped when the run's history is written, when it fails, or when
the deadline passes. Every process started here is a process-group leader and is reaped: SIGTERM
to its group, then SIGKILL after a grace period.

The Flower App submitted is a generated folder holding only a ``pyproject.toml`` whose components
are :data:`instantft.fleet.server.app` and :data:`instantft.fleet.client.app` (installed with
instantft) and whose run config carries the fleet's settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from instantft.errors import InstantFTError
from instantft.fleet.config import Fleet, encode
from instantft.settings import FineTuneConfig

HOST = "127.0.0.1"
GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InstantFTError(f"{Path(str(proc.args[0])).name} exited with status {proc.returncode} (log: {log})")  # type: ignore[index]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise InstantFTError(f"nothing listens on {HOST}:{port} in time (log: {log})")


def _toml(value: Any) -> str:
    if isinstance(value, str):
        if "'" in value or "\n" in value:
            raise InstantFTError(f"cannot write {value!r} as a TOML literal string")
        return f"'{value}'"
    return json.dumps(value)


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    """A Flower App folder: a pyproject.toml naming instantft's ServerApp and ClientApp."""
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml(v)}" for k, v in run_config.items())
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "instantft-fleet"
version = "1.0.0"
description = "instantft devices fine-tuning together, sending only their adapters"
license = "MIT"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "instantft"

[tool.flwr.app.components]
serverapp = "instantft.fleet.server:app"
clientapp = "instantft.fleet.client:app"

[tool.flwr.app.config]
{config}
""")
    (folder / "instantft_fleet_app.py").write_text('"""The components are in instantft.fleet (installed)."""\n')
    return folder


class Processes:
    """Processes started as their own group leaders, all stopped by :meth:`stop_all`."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc, log

    def stop_all(self) -> None:
        """SIGTERM to every group started here and to every descendant (Flower's SuperExec starts
        its ServerApp and ClientApps in process groups of their own), then SIGKILL to what is left."""
        tree = descendants([p.pid for p in self.procs])
        for proc in reversed(self.procs):  # the nodes first, the SuperLink last
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        _signal(tree, signal.SIGTERM)
        end = time.monotonic() + GRACE
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
        while time.monotonic() < end and any(_alive(pid) for pid in tree):
            time.sleep(0.1)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=GRACE)
        _signal(tree, signal.SIGKILL)


def descendants(roots: list[int]) -> list[int]:
    """Every live descendant of ``roots`` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(roots)
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise InstantFTError(f"{name} not found beside {sys.executable}: pip install 'instantft[fleet]'")
    return str(path)


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
    else:
        with tempfile.TemporaryDirectory(prefix="instantft-deploy-") as tmp:
            yield Path(tmp)


def deploy(fleet: Fleet, finetune: FineTuneConfig, nodes: int, *, deadline: float = 600.0, workdir: Path | None = None,
           node_config: dict[int, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Start a SuperLink and ``nodes`` SuperNodes on 127.0.0.1, run the fleet on them, stop them all
    and return the server's round history. ``deadline``: seconds for the whole run; ``workdir``
    keeps the app, the logs and the Flower home (default: a temporary folder, removed);
    ``node_config`` adds ``--node-config`` text to a device (``"fault='nan'"``)."""
    if nodes < 1:
        raise InstantFTError(f"--nodes must be >= 1, got {nodes}")
    end = time.monotonic() + deadline
    with _workdir(workdir) as work:
        home, logs = work / "flwr-home", work / "logs"
        home.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        out = work / "history.json"
        out.unlink(missing_ok=True)
        link_port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{HOST}:{link_port}"\ninsecure = true\n'
        )
        app = write_app(work / "app", {**encode(fleet, finetune), "nodes": nodes, "out": str(out)})
        env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env["OMP_NUM_THREADS"] = "1"
        procs = Processes(env, logs)
        try:
            link, link_log = procs.start("superlink", [
                _bin("flower-superlink"), "--insecure", "--host", HOST, "--port", str(link_port),
                "--disable-runtime-dependency-installation", "--database", str(work / "state.db")])  # fmt: skip
            _wait_port(link_port, end, link, link_log)
            for i in range(nodes):
                extra = f" {node_config[i]}" if node_config and i in node_config else ""
                procs.start(f"supernode-{i}", [
                    _bin("flower-supernode"), "--insecure", "--superlink", f"{HOST}:{link_port}",
                    "--host", HOST, "--port", str(free_port()),
                    "--node-config", f"partition-id={i} num-partitions={nodes}{extra}"])  # fmt: skip
            args = [_bin("flwr"), "run", str(app), "local", "--format", "json"]
            wait = max(1.0, end - time.monotonic())
            try:
                submit = subprocess.run(args, env=env, cwd=work, capture_output=True, text=True, timeout=wait)
            except subprocess.TimeoutExpired:
                raise InstantFTError(f"flwr run did not return within {deadline:g} s (logs: {logs})") from None
            (logs / "flwr-run.log").write_text(submit.stdout + submit.stderr)
            if submit.returncode != 0:
                raise InstantFTError(f"flwr run failed: {(submit.stdout + submit.stderr).strip()[-400:]}")
            while not out.is_file():
                if time.monotonic() > end:
                    raise InstantFTError(f"the run did not finish within {deadline:g} s (logs: {logs})")
                if link.poll() is not None:
                    raise InstantFTError(f"the SuperLink exited with status {link.returncode} (log: {link_log})")
                time.sleep(0.5)
            time.sleep(0.2)  # the file is written in one call; let it be flushed
            return dict(json.loads(out.read_text()))
        finally:
            procs.stop_all()
