"""The command line: JSON contract, adapter files, errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instantft.cli import main

SMALL = ["--samples", "100", "--eval-samples", "300", "--epochs", "2"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method", ["lora-last", "skip2-lora", "instantft"])
def test_finetune_json_and_adapter_round_trip(method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    adapter = tmp_path / "adapter.safetensors"
    code, out, _ = run(capsys, "finetune", "--dataset", "rotfmnist", "--angle", "60", "--method", method,
                       "--save-adapter", str(adapter), "--json", *SMALL)
    assert code == 0
    record = json.loads(out)  # exactly one JSON object
    for key in ("method", "dataset", "angle", "seed", "rank", "epochs", "batch_size", "lr", "samples",
                "trainable_params", "accuracy_before", "accuracy_after", "finetune_seconds", "cache_bytes"):
        assert key in record, key
    assert record["method"] == method and record["samples"] == 100 and 0 <= record["accuracy_after"] <= 1
    code, out, _ = run(capsys, "evaluate", "--dataset", "rotfmnist", "--angle", "60", "--adapter", str(adapter),
                       "--samples", "100", "--eval-samples", "300", "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] == pytest.approx(record["accuracy_after"])


def test_divergence_writes_no_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    adapter = tmp_path / "a.safetensors"
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "skip2-lora", "--lr", "1e30",
                         "--save-adapter", str(adapter), *SMALL)
    assert code == 2 and "training diverged" in err and "epoch 1, step" in err
    assert not adapter.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "lora-most"], "unknown method 'lora-most'; valid: none, ft-all"),
        (["--method", "ft-all", "--rank", "0"], "--rank must be >= 1"),
        (["--method", "ft-all", "--epochs", "0"], "--epochs must be >= 1"),
        (["--method", "ft-all", "--lr", "0"], "--lr must be"),
        (["--method", "ft-all", "--batch-size", "2000"], "larger than the 1024 fine-tuning samples"),
    ],
)
def test_bad_arguments_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_unknown_dataset(capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "finetune", "--dataset", "cifar", "--method", "none")
    assert code == 2 and "valid: rotmnist, rotfmnist, svhn" in err


def test_adapter_for_another_base_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    adapter = tmp_path / "a.safetensors"
    assert run(capsys, "finetune", "--dataset", "rotmnist", "--method", "lora-last", "--save-adapter", str(adapter),
               *SMALL)[0] == 0
    from instantft.models import build, save_checkpoint

    other = save_checkpoint(tmp_path / "other.safetensors", build("lenet5-mnist"), {"dataset": "mnist"})
    code, _, err = run(capsys, "evaluate", "--dataset", "rotmnist", "--adapter", str(adapter),
                       "--checkpoint", str(other))
    assert code == 2 and "another base model" in err


def test_evaluate_defaults_to_the_adapters_own_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    adapter = tmp_path / "a.safetensors"
    code, out, _ = run(capsys, "finetune", "--dataset", "rotmnist", "--angle", "60", "--seed", "3",
                       "--method", "ft-last", "--save-adapter", str(adapter), "--json", *SMALL)
    trained = json.loads(out)
    code, out, _ = run(capsys, "evaluate", "--adapter", str(adapter), "--json")
    again = json.loads(out)
    assert code == 0 and again["angle"] == 60 and again["seed"] == 3 and again["eval_samples"] == 300
    assert again["accuracy"] == pytest.approx(trained["accuracy_after"])
    code, _, err = run(capsys, "evaluate", "--adapter", str(adapter), "--dataset", "rotfmnist")
    assert code == 2 and "fine-tuned on rotmnist, not rotfmnist" in err


def test_unwritable_output_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "lora-all",
                       "--save-adapter", str(blocker / "a.safetensors"), *SMALL)
    assert code == 2 and "cannot write here" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--angle", "nan"], "--angle must be a finite number"), (["--eval-samples", "0"], "--eval-samples must be >= 1"),
     (["--threads", "0"], "--threads must be >= 1"), (["--cache-max-bytes", "-1"], "--cache-max-bytes must be >= 0")],
)
def test_more_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "skip2-lora", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_svhn_rejects_an_angle(svhn_dir: Path, capsys: pytest.CaptureFixture[str]):
    from instantft.data import make_task
    from instantft.errors import InstantFTError

    with pytest.raises(InstantFTError, match="--angle applies to rotmnist"):
        make_task("svhn", angle=45, samples=10, data_dir=svhn_dir)
    with pytest.raises(InstantFTError, match=r"--samples must be in 1\.\.50 for svhn"):
        make_task("svhn", samples=500, data_dir=svhn_dir)
