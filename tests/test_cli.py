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
        (["--method", "lora-most"], "--method 'lora-most' is unknown; valid: none, ft-all"),
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


# --- one line for every usage error; numbers at both ends of their range ----------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["finetune", "--dataset", "rotmnist", "--method", "none", "--angle"], "--angle requires an argument"),
        (["finetune", "--dataset", "rotmnist", "--method", "none", "--frob", "1"], "Unknown option: --frob"),
        (["finetune", "--dataset", "rotmnist"], "--method requires an argument"),
        (["finetune", "--dataset", "rotmnist", "--method", "none", "--rank", "x"], "--rank must be a valid integer"),
        (["finetune", "--dataset", "rotmnist", "--method", "none", "--init", "he"], "--init must be 'gaussian' or"),
        (["frobnicate"], 'Unknown command "frobnicate"'),
        (["table1", "--dataset", "cifar"], 'Invalid value "cifar" for --dataset'),
        (["table1", "--rank", str(2**64)], "--rank must be <= 4096, got 18446744073709551616"),
        (["demo", "--angle", "inf"], "--angle must be a finite number, got inf"),
        (["demo", "--angle", "-nan"], "--angle must be a finite number, got nan"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1 and out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", str(2**63)], "--seed must be < 9223372036854775808"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--init-seed", str(2**64)], "--init-seed must be < 9223372036854775808"),
        (["--threads", "100000"], "--threads must be <= "),
        (["--lr", "1e39"], "--lr must be at most 3.40282e+38 in magnitude (float32)"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--lr", "-0.1"], "--lr must be > 0"),
        (["--scale", "nan"], "--scale must be a finite number"),
        (["--init-std", "1e40"], "--init-std must be at most"),
        (["--rank", "4097"], "--rank must be <= 4096"),
        (["--batch-size", str(2**21)], "--batch-size must be <= 1048576"),
        (["--epochs", "1000000"], "steps per epoch = 52,000,000 steps, more than the 10,000,000"),
        (["--epochs", "100000000"], "--epochs must be <= 10000000"),
        (["--angle", "1e9"], "--angle must be <= 360"),
        (["--samples", str(2**31)], "--samples must be <= 2147483647"),
        (["--eval-samples", "0"], "--eval-samples must be >= 1"),
        (["--cache-max-bytes", str(2**63)], "--cache-max-bytes must be < 9223372036854775808"),
        (["--softmax-table-size", "4"], "--numerics float takes no fixed-point option"),
    ],
)
def test_range_checks_include_the_top(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "skip2-lora", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_memory_budget_refuses_a_rank_before_allocating(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]):
    from instantft import settings

    monkeypatch.setattr(settings, "MEMORY_BUDGET_BYTES", 10 * 2**20)
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "skip2-lora", "--rank", "4096",
                       *SMALL)
    assert code == 2 and "more than the 10 MiB memory budget" in err


def test_negative_numbers_parse(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "none", "--angle", "-1e-3",
                       "--json", *SMALL)
    assert code == 0 and json.loads(out)["angle"] == -0.001
    code, _, err = run(capsys, "table1", "--rank", "-3")  # every subcommand
    assert code == 2 and "--rank" in err and "expected one argument" not in err


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "finetune", "--help")
    assert code == 0 and "--batch-size" in out and "--save-adapter" in out and "--data" in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in ("finetune", "evaluate", "table1", "stream", "export"))
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("instantft ")
    code, out, _ = run(capsys, "table1", "--help")
    assert code == 0 and "--rank" in out


# --- your own model and data -------------------------------------------------------------------
MODELS = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))

def not_a_module():
    return 3

def boom():
    raise RuntimeError("no\\nway")
'''


@pytest.fixture
def user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model factory module and a learnable 3-class .npz (the brightest third of the image)."""
    import numpy as np

    (tmp_path / "cli_test_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.3, (90, 6, 6)).astype(np.float32)
    y = np.arange(90) % 3
    for i, c in enumerate(y):
        x[i, 2 * c : 2 * c + 2] += 0.7
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    return tmp_path


def test_finetune_own_model_and_npz(user_files: Path, capsys: pytest.CaptureFixture[str]):
    adapter = user_files / "a.safetensors"
    code, out, err = run(capsys, "finetune", "--data", str(user_files / "mine.npz"), "--model",
                         "cli_test_models:build", "--method", "skip2-lora", "--epochs", "3", "--batch-size", "10",
                         "--lr", "0.5", "--save-adapter", str(adapter), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["dataset"] == "mine" and record["samples"] == 72 and record["eval_samples"] == 18
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
    assert record["checkpoint"]["architecture"] == "cli_test_models:build"
    code, _, err = run(capsys, "evaluate", "--adapter", str(adapter), "--json")
    assert code == 2 and "fine-tuned on your own model (cli_test_models:build); pass --model, --weights" in err
    code, out, err = run(capsys, "evaluate", "--adapter", str(adapter), "--model", "cli_test_models:build",
                         "--json")  # the data file and the split from the record
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(record["accuracy_after"])


def test_finetune_own_model_on_an_image_folder_with_taps(user_files: Path, capsys: pytest.CaptureFixture[str]):
    import numpy as np
    from PIL import Image

    x = np.load(user_files / "mine.npz")["x"]
    y = np.load(user_files / "mine.npz")["y"]
    for i, (img, c) in enumerate(zip(x[:30], y[:30], strict=True)):
        (user_files / "folder" / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(user_files / "folder" / f"class{c}" / f"{i}.png")
    adapter = user_files / "a.safetensors"
    code, out, err = run(capsys, "finetune", "--data", str(user_files / "folder"), "--model", "cli_test_models:build",
                         "--taps", "3", "--method", "skip-lora", "--epochs", "1", "--batch-size", "6", "--json",
                         "--save-adapter", str(adapter))
    assert code == 0, err
    record = json.loads(out)
    assert record["samples"] == 24
    code, out, err = run(capsys, "evaluate", "--adapter", str(adapter), "--model", "cli_test_models:build", "--json")
    assert code == 0, err  # the taps come from the adapter's record
    assert json.loads(out)["accuracy"] == pytest.approx(record["accuracy_after"])


def test_weights_are_loaded_and_checked(user_files: Path, capsys: pytest.CaptureFixture[str]):
    import cli_test_models  # type: ignore[import-not-found]
    import torch
    from safetensors.torch import save_file

    base = ["finetune", "--data", str(user_files / "mine.npz"), "--model", "cli_test_models:build", "--method",
            "none", "--json", "--weights"]
    state = {k: torch.zeros_like(v) for k, v in cli_test_models.build().state_dict().items()}
    save_file(state, user_files / "zero.safetensors")
    code, out, err = run(capsys, *base, str(user_files / "zero.safetensors"))
    assert code == 0, err
    record = json.loads(out)
    assert len(record["checkpoint"]["weights_sha256"]) == 64
    # all-zero weights really loaded: every logit 0, so every prediction is class 0
    from instantft.data.userdata import load_npz, user_task

    held_out = user_task(load_npz(user_files / "mine.npz").data, seed=0).evaluate.labels
    assert record["accuracy_before"] == pytest.approx(float((held_out == 0).float().mean()))
    bad = dict(state)
    bad["1.weight"] = torch.zeros(16, 35)
    save_file(bad, user_files / "shape.safetensors")
    code, _, err = run(capsys, *base, str(user_files / "shape.safetensors"))
    assert code == 2 and "1.weight has shape (16, 35), the model's is (16, 36)" in err and err.count("\n") == 1
    save_file({"1.weight": state["1.weight"]}, user_files / "few.safetensors")
    code, _, err = run(capsys, *base, str(user_files / "few.safetensors"))
    assert code == 2 and "tensors do not match the model (missing 1.bias" in err
    nan = dict(state)
    nan["3.bias"] = torch.full((3,), float("nan"))
    save_file(nan, user_files / "nan.safetensors")
    code, _, err = run(capsys, *base, str(user_files / "nan.safetensors"))
    assert code == 2 and "3.bias holds NaN or infinite values" in err
    (user_files / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    code, _, err = run(capsys, *base, str(user_files / "junk.safetensors"))
    assert code == 2 and "not a readable .safetensors file" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no_such_module_xyz:build",
         "importing no_such_module_xyz raised ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ("cli_test_models:missing", "cli_test_models has no function missing"),
        ("cli_test_models:not_a_module", "not_a_module() returned int, not a torch.nn.Module"),
        ("cli_test_models:boom", "boom() raised RuntimeError: no way"),
        ("cli_test_models", "--model must be package.module:factory"),
    ],
)
def test_bad_model_factory_is_one_line(user_files: Path, model: str, message: str,
                                       capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "finetune", "--data", str(user_files / "mine.npz"), "--model", model,
                       "--method", "none")
    assert code == 2 and message in err and err.count("\n") == 1


def test_bad_user_data_through_the_cli(user_files: Path, capsys: pytest.CaptureFixture[str]):
    import numpy as np

    np.savez(user_files / "five.npz", x=np.zeros((9, 6, 6), np.float32), y=np.arange(9) % 5)
    code, _, err = run(capsys, "finetune", "--data", str(user_files / "five.npz"), "--model", "cli_test_models:build",
                       "--method", "none")
    assert code == 2 and "label 4 is outside the model's 3 classes" in err and err.count("\n") == 1
    np.savez(user_files / "wide.npz", x=np.zeros((9, 7, 7), np.float32), y=np.arange(9) % 3)
    code, _, err = run(capsys, "finetune", "--data", str(user_files / "wide.npz"), "--model", "cli_test_models:build",
                       "--method", "none")
    assert code == 2 and "the model rejects inputs of shape (1, 7, 7)" in err and err.count("\n") == 1
    code, _, err = run(capsys, "finetune", "--data", str(user_files / "mine.npz"), "--model", "cli_test_models:build",
                       "--taps", "nothing_here", "--method", "skip-lora")
    assert code == 2 and "nothing_here" in err and err.count("\n") == 1
    code, _, err = run(capsys, "finetune", "--data", str(user_files / "mine.npz"), "--method", "none")
    assert code == 2 and "--data needs --model" in err


def test_python_api_takes_the_settings_models():
    from instantft.errors import InstantFTError
    from instantft.run import Run, finetune
    from instantft.settings import Task

    run = Run(method="none", task=Task(dataset="rotmnist", angle=30, samples=50, eval_samples=60))
    a = finetune(run).record
    assert a["angle"] == 30 and a["samples"] == 50 and a["eval_samples"] == 60
    with pytest.raises(InstantFTError, match="angel is not a setting"):
        Task(dataset="rotmnist", angel=30)


def test_explicit_taps_on_the_bundled_lenet(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    adapter = tmp_path / "a.safetensors"
    code, out, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "skip-lora", "--taps", "fc1,fc2",
                         "--save-adapter", str(adapter), "--json", *SMALL)
    assert code == 0, err
    record = json.loads(out)
    code, out, err = run(capsys, "evaluate", "--adapter", str(adapter), "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(record["accuracy_after"])
    code, default_out, _ = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "skip-lora", "--json", *SMALL)
    assert json.loads(default_out)["trainable_params"] != record["trainable_params"]  # fewer taps, fewer adapters


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--angle", "1e9"], "--angle must be <= 360"),
        (["demo", "--seed", str(2**63)], "--seed must be <"),
        (["pretrain", "--dataset", "mnist", "--seed", str(2**63)], "--seed must be <"),
        (["pretrain", "--dataset", "cifar"], "--dataset must be 'mnist', 'fmnist', 'svhn', 'fan', "),
        (["pretrain", "--dataset", "mnist", "--lr", "1e39"], "--lr must be at most"),
        (["evaluate", "--adapter", "missing.safetensors", "--samples", "0"], "--samples must be >= 1"),
    ],
)
def test_other_commands_check_their_ranges(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_json_never_prints_a_bare_nan(capsys: pytest.CaptureFixture[str]):
    from instantft.cli import print_json

    print_json({"loss": float("nan"), "losses": [1.0, float("inf")], "nested": {"x": -float("inf")}})
    out = capsys.readouterr().out
    assert json.loads(out) == {"loss": None, "losses": [1.0, None], "nested": {"x": None}} and "NaN" not in out


def test_own_data_on_an_in_tree_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """MNIST digits as a user's .npz, fine-tuned from the bundled LeNet-5 checkpoint file."""
    import numpy as np

    from instantft.data import load_split
    from instantft.models import bundled_checkpoint

    test = load_split("mnist", "test")
    x = (test.images[:200, 0].numpy() * 255).round().astype(np.uint8)
    np.savez(tmp_path / "digits.npz", x=x, y=test.labels[:200].numpy())
    code, out, err = run(capsys, "finetune", "--data", str(tmp_path / "digits.npz"), "--checkpoint",
                         str(bundled_checkpoint("mnist")), "--method", "skip2-lora", "--epochs", "1", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["samples"] == 160 and record["eval_samples"] == 40
    assert record["accuracy_before"] > 0.9  # upright MNIST on the MNIST backbone: the pixels went in unchanged


def test_every_setting_has_a_flag_and_the_cli_defaults_are_the_apis(capsys: pytest.CaptureFixture[str]):
    """Every field of the settings models finetune takes is a flag (a new field without one fails
    here), and the run the command line builds is the Python API's default."""
    from instantft.cli import flag
    from instantft.fixedpoint import FixedPointConfig
    from instantft.run import config_for, run_for
    from instantft.settings import FineTuneConfig, Runtime, Source, Task

    code, out, _ = run(capsys, "finetune", "--help")
    assert code == 0
    for model in (Task, Source, FineTuneConfig, FixedPointConfig, Runtime):
        for field in model.model_fields:
            assert flag(field) in out, field
    cli_run = run_for("instantft", Task(dataset="svhn"), Source(), FineTuneConfig())
    assert cli_run.hyper == config_for("svhn") and cli_run.hyper.lr == 0.025
    assert run_for("instantft", Task(dataset="svhn"), Source(), FineTuneConfig(lr=0.1)).hyper.lr == 0.1


def test_last_layer_flag(capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "ft-last", "--last-layer", "fc2",
                         "--json", *SMALL)
    assert code == 0, err
    assert json.loads(out)["trainable_params"] == 120 * 84 + 84  # fc2, not fc3
