"""The Fig. 7 study (studies/fig7.py) and the fixed-point study end to end on a tiny configuration:
outputs exist, re-runs resume; ``instantft reproduce`` finds and runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import studies_path  # the studies are imported in the tests, after it


def test_reproduce_tiny(tmp_path: Path, svhn_dir: Path):
    from fig7 import ReproduceConfig, reproduce

    out = tmp_path / "out"
    cfg = ReproduceConfig(out=out, seeds=1, angles=(90,), datasets=("rotmnist",), samples=60, eval_samples=100,
                          epochs=1, timing_repeats=1, ablation=True, fixedpoint=False, show_progress=False,
                          data_dir=str(svhn_dir), svhn_ns=(50, 100), svhn_samples=40)
    reproduce(cfg)
    runs = json.loads((out / "results.json").read_text())
    fig7 = [r for r in runs if r["study"] == "fig7"]
    assert {(r["dataset"], r["angle"]) for r in fig7} == {("rotmnist", 90.0), ("rotfmnist", 75.0)}
    assert len(fig7) == 2 * 9
    for r in runs:
        for key in ("dataset", "angle", "method", "seed", "accuracy_before", "accuracy_after", "finetune_seconds",
                    "cache_bytes", "config", "machine", "package_version", "git_commit"):
            assert key in r, key
    for name in ("report.md", "accuracy_vs_angle.png", "finetune_time.png", "cache_size.png", "accuracy_rotmnist.md",
                 "accuracy_rotmnist.csv", "talk_table.md", "ablation.md", "timing.json"):
        assert (out / name).is_file(), name
    svhn = [r for r in runs if r["study"] == "svhn"]
    assert {r["variant"] for r in svhn} == {"N=50", "N=100"} and len(svhn) == 2 * 9
    assert all(r["samples"] == 40 and r["eval_samples"] == 30 for r in svhn)
    assert all(r["checkpoint"]["architecture"] == "lenet5-svhn" for r in svhn)
    assert all(r["samples"] == 60 and r["eval_samples"] == 100 for r in runs if r["study"] != "svhn")
    report = (out / "report.md").read_text()
    assert "91.8" in report and "What matched" in report and "SVHN: accuracy by pre-training size N" in report
    # resumable: a second run finds every run done and adds none
    before = (out / "results.json").read_text()
    reproduce(cfg)
    assert json.loads((out / "results.json").read_text()) == json.loads(before)


def test_fixed_point_study_tiny_and_resumable(tmp_path: Path):
    from fixedpoint import run_study

    out = run_study(tmp_path, seeds=1, quick=True, samples=40, eval_samples=50, show_progress=False)
    assert {"comparison", "memory", "sweep", "markdown"} <= set(out)
    for name in ("fixedpoint.json", "fixedpoint.md", "fixedpoint_formats.png", "fixedpoint_runs.json"):
        assert (tmp_path / name).is_file(), name
    runs = json.loads((tmp_path / "fixedpoint_runs.json").read_text())
    assert {r["numerics"] for r in runs} == {"float", "fixed"}
    run_study(tmp_path, seeds=1, quick=True, samples=40, eval_samples=50, show_progress=False)
    assert json.loads((tmp_path / "fixedpoint_runs.json").read_text()) == runs  # resumed: nothing re-run


def test_data_dir_reaches_the_fixed_point_study(tmp_path):
    """``reproduce --data-dir`` used to stop short of the fixed-point study: a corrupt file in the
    directory given must now be what the study trips over."""
    from fixedpoint import run_study
    from instantft.errors import InstantFTError

    bad = tmp_path / "data" / "mnist"
    bad.mkdir(parents=True)
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"not the MNIST file")
    with pytest.raises(InstantFTError, match="t10k-images"):
        run_study(tmp_path / "out", seeds=1, quick=True, samples=40, eval_samples=50, show_progress=False,
                  data_dir=str(tmp_path / "data"))  # fmt: skip


def test_instantft_reproduce_runs_a_study_of_the_checkout(capfd):
    """``instantft reproduce [STUDY] [ARGS]`` hands the arguments to studies/STUDY.py (default fig7)."""
    from instantft.cli import main
    from instantft.reproduce import script_and_args

    assert script_and_args(["--quick"]) == (studies_path.STUDIES / "fig7.py", ["--quick"])
    assert script_and_args(["stream", "--seeds", "1"]) == (studies_path.STUDIES / "stream.py", ["--seeds", "1"])
    assert script_and_args(["c-core"])[0] == studies_path.STUDIES / "c_core.py"
    assert main(["reproduce", "--help"]) == 0
    assert "instantft reproduce [STUDY]" in capfd.readouterr().out
    assert main(["reproduce", "fig7", "--help"]) == 0
    assert "python studies/fig7.py" in capfd.readouterr().out
    assert main(["reproduce", "_common"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: no study '_common' in ") and "fig7" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "x"], "error: python studies/fig7.py: argument --seeds: invalid int value: 'x'\n"),
        (["fixedpoint", "--frob"], "error: python studies/fixedpoint.py: unrecognized arguments: --frob\n"),
    ],
)
def test_a_study_usage_error_is_one_line(argv: list[str], message: str, capfd):
    from instantft.cli import main

    assert main(["reproduce", *argv]) == 2
    assert capfd.readouterr().err == message


def test_instantft_reproduce_outside_a_checkout_is_one_line(tmp_path: Path, monkeypatch, capsys):
    import instantft.reproduce as command
    from instantft.cli import main

    monkeypatch.setattr(command, "__file__", str(tmp_path / "site-packages" / "instantft" / "reproduce.py"))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: instantft reproduce runs the studies of a source checkout") and err.count("\n") == 1
