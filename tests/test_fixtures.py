"""Files written by an earlier version still load and score what they scored then: adapters
through ``instantft evaluate`` and ``FineTuner.load``-style reloads, the device bundle through
``instantft-device`` (tests/fixtures/v0.1.0/README.md says how they were made)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_device import make

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"
EXPECTED = [json.loads(line) for line in (FIXTURES / "evaluate.jsonl").read_text().splitlines()]


def _file(record: dict) -> Path:
    name = record["method"] + ("-fixed" if record["numerics"] == "fixed" else "")
    return FIXTURES / f"{name}.safetensors"


@pytest.mark.parametrize("expected", EXPECTED, ids=lambda r: _file(r).stem)
def test_old_adapter_evaluates_as_it_did(expected: dict, capsys: pytest.CaptureFixture[str]):
    from instantft.cli import main

    assert main(["evaluate", "--adapter", str(_file(expected)), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for key in ("method", "numerics", "dataset", "angle", "seed", "eval_samples"):
        assert got[key] == expected[key], key
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)


def test_old_device_bundle_runs_as_it_did(tmp_path: Path):
    device = make("device")
    bundle = tmp_path / "bundle"
    shutil.copytree(FIXTURES / "bundle-instantft", bundle)
    proc = subprocess.run([str(device), str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = json.loads((FIXTURES / "device.json").read_text())
    for key in ("method", "storage", "samples", "eval_samples", "correct_before", "correct_after", "steps",
                "cache_bytes"):
        assert got[key] == want[key], key
    assert (bundle / "adapter.safetensors").is_file()
