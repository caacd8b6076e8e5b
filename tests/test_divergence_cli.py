"""The issue-12 examples of bad results saved as good: each now exits 2 with one line and writes
no adapter, whatever the method or engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from instantft.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["--method", "instantft", "--scale", "1e30"],
        ["--method", "skip2-lora", "--scale", "1e30", "--engine", "reference"],
        ["--method", "lora-all", "--lr", "1e20"],
        ["--method", "ft-all", "--lr", "1e20"],
        ["--method", "skip-lora", "--lr", "1e20"],
        ["--method", "instantft", "--lr", "1e39"],
    ],
)
def test_a_diverging_run_writes_nothing(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "a.safetensors"
    code = main(["finetune", "--dataset", "rotmnist", "--samples", "40", "--epochs", "1", "--eval-samples", "50",
                 *argv, "--save-adapter", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())
