"""`instantft bench` on a tiny configuration: the JSON contract (speed itself is not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from instantft.cli import main


def test_bench_json_contract(capsys: pytest.CaptureFixture[str]):
    before = torch.get_num_threads()
    code = main(["bench", "--json", "--samples", "60", "--repeats", "2"])
    assert torch.get_num_threads() == before  # the bench sets threads for its runs only
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("methods", "forward", "sgemm_gflops", "flop_limit_seconds", "ratios", "machine", "setup"):
        assert key in out, key
    assert out["machine"]["threads"] == 1 and out["machine"]["cpu"]
    for name in ("lora-all", "ft-all", "skip2-lora", "instantft", "skip2-lora[reference]"):
        row = out["methods"][name]
        assert {"cpu_seconds", "wall_seconds", "cpu_spread", "cpu_stable", "wall_stable"} <= set(row)
        assert len(row["cpu_runs"]) == 2
    for name, value in out["ratios"].items():  # a ratio is a number or flagged, never from an unstable row
        assert value is None or value > 0, name
    if out["forward"] is not None:
        assert set(out["forward"]) == {"c_fill", "torch_inference"}


def test_a_wide_spread_is_flagged_not_divided():
    from instantft.bench import _ratio, _summary

    steady = _summary([1.0, 1.0, 1.01], [1.0, 1.0, 1.01], 0.25)
    noisy = _summary([1.0, 3.0, 9.0], [1.0, 3.0, 9.0], 0.25)
    assert steady["cpu_stable"] and not noisy["cpu_stable"]
    rows = {"a": steady, "b": noisy, "c": steady}
    assert _ratio(rows, "a", "b", "cpu_seconds") is None
    assert _ratio(rows, "a", "c", "cpu_seconds") == pytest.approx(1.0)


@pytest.mark.parametrize(("argv", "message"), [(["--threads", "0"], "--threads must be >= 1"),
                                               (["--repeats", "x"], "--repeats must be a valid integer"),
                                               (["--samples", "5"], "--samples must be >= 40")])  # fmt: skip
def test_bad_bench_options_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
