"""``instantft fleet simulate`` and ``instantft fleet deploy``: the two ways to run a fleet, as
typed functions whose flags are the fields of :class:`~instantft.fleet.config.Fleet`,
:class:`~instantft.settings.Training` and :class:`~instantft.settings.Adapters`. Flower is imported
only when a command runs; without it the command says so in one line."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter

from instantft.fleet import require_flower
from instantft.fleet.config import Fleet
from instantft.settings import Adapters, FineTuneConfig, Training

FleetFlags = Annotated[Fleet, Parameter(name="*", group="Fleet")]
TrainingFlags = Annotated[Training, Parameter(name="*", group="Training (on each device, each round)")]
AdapterFlags = Annotated[Adapters, Parameter(name="*", group="Adapters")]
#: b-only sends B alone, so a fleet affords a rank a single fine-tune would not (docs/fleets.md)
FLEET_RANK = 64
Json = Annotated[bool, Parameter(negative="", help="Print the server's round history as one JSON object.")]

app = App(name="fleet", help="Devices fine-tuning together through Flower, sending only their adapters "
          "(needs pip install 'instantft[fleet]').")  # fmt: skip


def summary(history: dict[str, Any]) -> str:
    """One line per round: wall time, devices aggregated / left out, bytes up per device, mean accuracy."""
    lines = ["round  seconds  aggregated  left out  refused  clipped  bytes up/device  mean held-out accuracy"]
    for r in history["rounds"]:
        acc = r.get("accuracy", {})
        mean = sum(acc.values()) / len(acc) if acc else float("nan")
        up = r.get("up-bytes", [0])
        lines.append(f"{r['round']:>5}  {r.get('seconds', float('nan')):7.2f}  {len(r.get('aggregated', [])):>10}  "
                     f"{len(r.get('failed', {})):>8}  {len(r.get('refused', {})):>7}  {len(r.get('clipped', {})):>7}  "
                     f"{max(up):>15,}  {mean:.2%}")  # fmt: skip
    return "\n".join(lines)


def _finish(history: dict[str, Any], json: bool) -> int:
    print(jsonlib.dumps(history) if json else summary(history))
    return 0


@app.command
def simulate(
    *,
    nodes: int = 24,
    fleet: FleetFlags = Fleet(),  # noqa: B008
    training: TrainingFlags = Training(epochs=2),  # noqa: B008
    adapters: AdapterFlags = Adapters(rank=FLEET_RANK),  # noqa: B008
    json: Json = False,
) -> int:
    """Run a fleet of virtual devices in Flower's simulation engine (Ray), on this machine.

    Parameters
    ----------
    nodes
        Virtual devices (SuperNodes).
    """
    require_flower()
    from instantft.fleet.simulate import simulate as run

    return _finish(run(fleet, FineTuneConfig.of(training, adapters), nodes), json)


@app.command
def deploy(
    *,
    nodes: int = 3,
    fleet: FleetFlags = Fleet(),  # noqa: B008
    training: TrainingFlags = Training(epochs=2),  # noqa: B008
    adapters: AdapterFlags = Adapters(rank=FLEET_RANK),  # noqa: B008
    deadline: float = 600.0,
    keep: Path | None = None,
    json: Json = False,
) -> int:
    """Start a SuperLink and NODES SuperNodes on 127.0.0.1 (free ports), run the fleet, stop them all.

    Parameters
    ----------
    nodes
        SuperNodes, each a separate process holding one device's data.
    deadline
        Seconds for the whole run; past it every process is stopped.
    keep
        Keep the generated app, the logs and the Flower home in this folder.
    """
    require_flower()
    from instantft.fleet.deploy import deploy as run

    return _finish(run(fleet, FineTuneConfig.of(training, adapters), nodes, deadline=deadline, workdir=keep), json)
