"""`instantft bench` on a tiny configuration: the JSON contract (speed itself is not asserted)."""

from __future__ import annotations

import json

import pytest

from instantft.cli import main

ROW_KEYS = {"seconds", "speedup_vs_lora_all", "flop_limit_multiple"}


def test_bench_json_contract(capsys: pytest.CaptureFixture[str]):
    code = main(["bench", "--json", "--samples", "60", "--repeats", "1", "--scaling", "", "--no-compile-check",
                 "--no-callgrind"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("methods", "flop_limit_seconds", "sgemm_gflops", "nf4_overhead", "cold_start_seconds",
                "peft_lora_seconds", "machine"):
        assert key in out, key
    for name in ("lora-all", "ft-all", "skip2-lora", "instantft"):
        row = out["methods"][name]
        assert set(row) >= ROW_KEYS
    assert out["sgemm_gflops"] > 0 and out["machine"]["cpu"]
