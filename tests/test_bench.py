"""`instantft bench` on a tiny configuration: the JSON contract (speed itself is not asserted)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
import torch

from instantft.cli import main

ROW_KEYS = {"seconds", "speedup_vs_lora_all", "flop_limit_multiple"}


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[int]:
    """The bench sets torch's thread count for itself: give the other tests theirs back."""
    before = torch.get_num_threads()
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def test_bench_json_contract(capsys: pytest.CaptureFixture[str]):
    with torch_threads_kept():
        code = main(["bench", "--json", "--samples", "60", "--repeats", "1", "--scaling", "", "--no-compile-check"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("methods", "flop_limit_seconds", "sgemm_gflops", "nf4_overhead", "cold_start_seconds", "machine"):
        assert key in out, key
    for name in ("lora-all", "ft-all", "skip2-lora", "instantft"):
        row = out["methods"][name]
        assert set(row) >= ROW_KEYS
    assert out["sgemm_gflops"] > 0 and out["machine"]["cpu"]
    assert "peft_lora_seconds" not in out  # the peers are studies (studies/c_core.py, studies/peft_lora.py)
    if out["core"] is not None:  # the C core is built: its fill beside torch's forward
        assert {"c_fill", "c_fill_1_thread", "torch_eager"} <= set(out["core"]["forward_ms"])
        assert "onnxruntime" not in out["core"]["forward_ms"]


def test_thread_state_is_restored():
    with torch_threads_kept() as before:
        torch.set_num_threads(before + 1)
    assert torch.get_num_threads() == before
