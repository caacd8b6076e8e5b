"""The any-backbone study (studies/backbones.py, run by fig7.py) on a tiny configuration: it runs every method on the
MLP beside LeNet-5, keys the runs by backbone, and writes its table and plot."""

from __future__ import annotations

from pathlib import Path

from . import studies_path  # noqa: F401  (the studies are imported in the tests, after it)


def test_backbones_study_runs_and_reports(tmp_path: Path):
    from fig7 import METHODS, ReproduceConfig, reproduce

    cfg = ReproduceConfig(out=tmp_path, seeds=1, only=("fig7", "backbones"), samples=40, eval_samples=60, epochs=1,
                          angles=(90,), datasets=("rotmnist",), backbones=("mlp",), show_progress=False)  # fmt: skip
    summary = reproduce(cfg)["backbones"]
    assert set(summary) == {"lenet5", "mlp"}
    for family in summary:
        assert set(summary[family]["rotmnist"]) == set(METHODS)
    mlp = summary["mlp"]["rotmnist"]
    assert mlp["instantft"]["cache_bytes"] < mlp["skip2-lora"]["cache_bytes"]
    assert mlp["skip-lora"]["cache_bytes"] == 0
    table = (tmp_path / "backbones.md").read_text()
    assert "| MLP acc." in table and "LeNet-5 acc." in table and "60 held-out" in table
    assert (tmp_path / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
