"""`reproduce` end to end on a tiny configuration: outputs exist, re-runs resume."""

from __future__ import annotations

import json
from pathlib import Path

from instantft.experiments.reproduce import ReproduceConfig, reproduce


def test_reproduce_tiny(tmp_path: Path):
    cfg = ReproduceConfig(out=tmp_path, seeds=1, angles=(90,), datasets=("rotmnist",), samples=60, eval_samples=100,
                          epochs=1, timing_repeats=1, ablation=True, fixedpoint=False, show_progress=False)
    reproduce(cfg)
    runs = json.loads((tmp_path / "results.json").read_text())
    fig7 = [r for r in runs if r["study"] == "fig7"]
    assert {(r["dataset"], r["angle"]) for r in fig7} == {("rotmnist", 90.0), ("rotfmnist", 75.0)}
    assert len(fig7) == 2 * 9
    for r in runs:
        for key in ("dataset", "angle", "method", "seed", "accuracy_before", "accuracy_after", "finetune_seconds",
                    "cache_bytes", "config", "machine", "package_version", "git_commit"):
            assert key in r, key
    for name in ("report.md", "accuracy_vs_angle.png", "finetune_time.png", "cache_size.png", "accuracy_rotmnist.md",
                 "accuracy_rotmnist.csv", "talk_table.md", "ablation.md", "timing.json"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert "91.8" in report and "What matched" in report
    # resumable: a second run finds every run done and adds none
    before = (tmp_path / "results.json").read_text()
    reproduce(cfg)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(before)
